"""The simulator's parts, one idea each; :mod:`funcpipe.planning.simulate` is their public face.

* :mod:`.kernel`: the discrete-event kernel (events, timed callbacks, generator processes);
* :mod:`.link`: a function's link to storage (a shared token bucket) and when a wait notices a key;
* :mod:`.cpu`: compute on shared host cores and under a CPU quota;
* :mod:`.lanes`: a function's lanes and what each upload and download costs it;
* :mod:`.replay`: every function walking the runtime's action list, and the gradient all-reduce;
* :mod:`.prediction`: the simulated steps turned into a :class:`Prediction`.
"""
