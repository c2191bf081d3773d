"""Pure parts of admission: the rate window, the limits that apply, the storage URL."""

from app.orm import Tenant
from app.services.admission import limits_storage_url, rate_item
from app.services.limits import Limits, effective_limits
from app.settings import Settings


def test_the_rate_window_holds_the_burst_and_never_exceeds_the_rate():
    def window(rate, burst=0):
        item = rate_item(Limits(submits_per_second=rate, submit_burst=burst))
        return item.amount, item.multiples

    assert window(2, 2) == (2, 1)
    assert window(5) == (5, 1)  # no burst: one second's worth
    assert window(0.5) == (1, 2)  # one submit per two seconds
    assert window(2, 10) == (10, 5)  # a burst of 10, then 2 a second on average
    assert window(10, 3) == (10, 1)  # a burst below the rate: the rate (documented slack)


def test_a_tenants_own_limit_wins_over_the_setting_and_zero_means_unlimited():
    settings = Settings(tenant_max_active_jobs=4, tenant_max_queued_rows=100)
    unset = Tenant(name="a")
    assert effective_limits(unset, settings) == Limits(max_queued_rows=100, max_active_jobs=4)
    own = Tenant(name="b", max_active_jobs=0, max_storage_bytes=10)
    limits = effective_limits(own, settings)
    assert (limits.max_active_jobs, limits.max_queued_rows, limits.max_storage_bytes) == \
        (0, 100, 10)
    assert limits.counted and not Limits(submits_per_second=1).counted


def test_redis_unix_sockets_are_spelled_for_the_limits_library():
    assert limits_storage_url("unix:///tmp/r.sock") == "redis+unix:///tmp/r.sock"
    assert limits_storage_url("redis://h:6379/2") == "redis://h:6379/2"
