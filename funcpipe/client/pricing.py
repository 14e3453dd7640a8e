"""What a run would cost on a real cloud: :class:`Pricing`, kept here for old imports.

The prices are platform data, in :mod:`funcpipe.platform_profiles` (one source of truth);
``AWS_LAMBDA`` here is the pricing of AWS Lambda (x86) + S3 Standard, us-east-1, the default.
"""

from __future__ import annotations

from funcpipe.platform_profiles import AWS_LAMBDA as _AWS_PROFILE
from funcpipe.platform_profiles import Prices, Pricing

__all__ = ["AWS_LAMBDA", "Prices", "Pricing"]

AWS_LAMBDA = _AWS_PROFILE.pricing
