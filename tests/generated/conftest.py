"""Hypothesis profiles for the generated tests: `ci` (the default, bounded and reproducible) and `thorough`."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                                        HealthCheck.filter_too_much], "print_blob": True}
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_common)
# debugging the generator itself: no shrinking
settings.register_profile("dev", max_examples=6, phases=[Phase.explicit, Phase.generate], database=None,
                          **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("GE_HYPOTHESIS_PROFILE", "ci"))
