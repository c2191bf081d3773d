"""The SSRF guard: address classes, resolver IP spellings, DNS names, the operator's policy."""

import ipaddress

import pytest

from app.domain.ssrf import UnsafeUrl, UrlPolicy, check_url, classify_address, parse_ip_literal
from workers.webhooks import Attempt, next_state, pinned_request

STRICT = UrlPolicy()
PRIVATE_OK = UrlPolicy(allow_private=True)


def resolver(table: dict[str, list[str]]):
    """A fake resolver: names from the table, anything else fails as a real lookup would."""
    def resolve(host: str) -> list[str]:
        if host not in table:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return table[host]
    return resolve


NO_DNS = resolver({})


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("2002:7f00:1::", "loopback"),
    ("8.8.8.8", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None),
])
def test_classify_address(address, reason):
    assert classify_address(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("host, address", [
    ("2130706433", "127.0.0.1"),        # decimal
    ("0177.0.0.1", "127.0.0.1"),        # octal
    ("0x7f.0.0.1", "127.0.0.1"),        # hex
    ("0x7f000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),             # short form
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("8.8.8.8", "8.8.8.8"),
])
def test_ip_spellings_that_resolvers_accept_are_parsed(host, address):
    assert parse_ip_literal(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "256.1.1.1", "1.2.3.4.5", "08.1.1.1",
                                  "0x.example", "localhost"])
def test_dns_names_are_not_ip_literals(host):
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:8080/hook", "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data",
    "https://2130706433/", "https://0177.0.0.1/", "https://0x7f.0.0.1/", "https://[::1]:8443/",
    "https://[::ffff:127.0.0.1]/", "https://10.1.2.3/", "https://0.0.0.0/", "https://224.0.0.1/",
])
def test_non_public_addresses_are_refused(url):
    with pytest.raises(UnsafeUrl, match="not a public address"):
        check_url(url, STRICT, NO_DNS)


def test_dns_names_that_resolve_to_private_addresses_are_refused():
    dns = resolver({"hooks.example.com": ["93.184.216.34"],
                    "rebind.example.com": ["93.184.216.34", "10.0.0.7"],
                    "metadata.example.com": ["169.254.169.254"],
                    "localhost": ["127.0.0.1", "::1"]})
    target = check_url("https://hooks.example.com/x", STRICT, dns)
    assert target.addresses == (ipaddress.ip_address("93.184.216.34"),)
    for host in ("rebind.example.com", "metadata.example.com", "localhost"):
        with pytest.raises(UnsafeUrl, match=host):
            check_url(f"https://{host}/x", STRICT, dns)


def test_unresolvable_names_malformed_urls_and_other_schemes_are_refused():
    for url in ("https://nowhere.invalid/", "ftp://8.8.8.8/", "file:///etc/passwd",
                "https:///path", "not a url", "https://8.8.8.8:99999/"):
        with pytest.raises(UnsafeUrl):
            check_url(url, STRICT, NO_DNS)


def test_plain_http_needs_allow_private():
    with pytest.raises(UnsafeUrl, match="https"):
        check_url("http://8.8.8.8/", STRICT, NO_DNS)
    assert check_url("http://8.8.8.8/", PRIVATE_OK, NO_DNS).port == 80


def test_allow_private_admits_loopback_and_private_but_not_metadata():
    for url in ("http://127.0.0.1:9000/", "http://10.0.0.1/", "http://[::1]:80/",
                "http://[fd00::1]/"):
        check_url(url, PRIVATE_OK, NO_DNS)
    for url in ("http://169.254.169.254/", "http://0.0.0.0/", "http://224.0.0.1/"):
        with pytest.raises(UnsafeUrl):
            check_url(url, PRIVATE_OK, NO_DNS)


def test_the_allowlist_takes_hosts_and_cidrs():
    policy = UrlPolicy.build(allow_private=False,
                             allowed=["hooks.internal", " 10.20.0.0/16", "fd00::/8", ""])
    dns = resolver({"svc.internal": ["10.20.3.4"], "other.internal": ["10.30.0.1"]})
    assert check_url("http://hooks.internal:8080/x", policy, NO_DNS).addresses == ()
    assert check_url("https://svc.internal/x", policy, dns).host == "svc.internal"
    assert check_url("https://[fd00::5]/x", policy, NO_DNS).port == 443
    with pytest.raises(UnsafeUrl):
        check_url("https://other.internal/x", policy, dns)


def test_requests_are_pinned_to_the_checked_address():
    dns = resolver({"hooks.example.com": ["93.184.216.34"]})
    target = check_url("https://hooks.example.com:8443/a?b=1", STRICT, dns)
    url, headers, extensions = pinned_request("https://hooks.example.com:8443/a?b=1", target)
    assert url == "https://93.184.216.34:8443/a?b=1"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
    literal = check_url("http://127.0.0.1:9/x", PRIVATE_OK, NO_DNS)
    assert pinned_request("http://127.0.0.1:9/x", literal) == ("http://127.0.0.1:9/x", {}, {})


def test_retry_schedule_and_outcomes():
    schedule = [0, 5, 300]
    assert next_state(Attempt(status_code=204), 1, schedule) == ("delivered", 0.0)
    assert next_state(Attempt(status_code=500), 1, schedule) == ("retry", 5.0)
    assert next_state(Attempt(error="timed out"), 2, schedule) == ("retry", 300.0)
    assert next_state(Attempt(status_code=500), 3, schedule) == ("failed", 0.0)
    assert next_state(Attempt(status_code=301), 1, schedule) == ("retry", 5.0)
    assert next_state(Attempt(status_code=410), 1, schedule) == ("gone", 0.0)
    assert next_state(Attempt(error="endpoint deleted", final=True), 1, schedule) \
        == ("failed", 0.0)
