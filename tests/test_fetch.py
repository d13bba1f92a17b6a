"""The one way URLs are read: refused addresses (also after DNS and on redirects), size, time and type limits.

Everything runs against a server on 127.0.0.1 (reachable only with the test-only
`allow_loopback`) and a fake resolver; no test touches the network.
"""
from __future__ import annotations

import ipaddress
import sys
import time
from types import ModuleType, SimpleNamespace

import pytest
from netfixtures import LocalServer, bomb_png, fake_dns, png_bytes, wav_bytes

from deforum_wan.renderer import fetch, outputs
from deforum_wan.renderer.fetch import AUDIO, IMAGE, FetchError, FetchPolicy

LOOPBACK_OK = FetchPolicy(allow_loopback=True, timeout=10)


@pytest.fixture
def server():
    with LocalServer() as s:
        r = s.routes
        r.add("/fox.png", png_bytes(), "image/png")
        r.add("/song.wav", wav_bytes(0.5), "audio/wav")
        r.add("/clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "video/mp4")
        r.add("/page.html", b"<html>secret admin page</html>", "text/html")
        r.add("/fake.png", b"<html>not an image</html>", "image/png")
        r.add("/playlist.mp3", b"#EXTM3U\n#EXTINF:1,\nhttp://169.254.169.254/latest/meta-data\n", "audio/mpeg")
        r.add("/bomb.png", bomb_png(), "image/png")
        r.add("/huge.png", b"\x89PNG" + b"\x00" * 64, "image/png", headers={"Content-Length": str(10**10)})
        r.add("/slow.png", png_bytes() + b"\x00" * 20_000, "image/png", drip=0.5)  # 1 KB every 0.5 s
        r.add("/teapot.png", b"", "image/png", status=418)
        yield s


def test_the_defaults_refuse_this_machine_before_connecting(server):
    for url in (server.url("/fox.png"), server.url("/fox.png", "[::1]"), server.url("/fox.png", "localhost"),
                server.url("/fox.png", "127.1.2.3"), server.url("/fox.png", "[::ffff:127.0.0.1]")):
        with pytest.raises(FetchError, match="loopback"):
            fetch.fetch(url, IMAGE)
    assert server.routes.seen == []  # refused before any connection


@pytest.mark.parametrize("address, words", [
    ("169.254.169.254", "link-local"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
    ("172.16.5.4", "private"), ("fd00::1", "private"), ("fe80::1", "link-local"), ("100.64.0.1", "not a public"),
    ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"),
    ("::ffff:169.254.169.254", "link-local"), ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 around 169.254.169.254
])
def test_names_that_resolve_to_non_public_addresses_are_refused(monkeypatch, address, words):
    asked = fake_dns(monkeypatch, {"innocent.example": [address]})
    with pytest.raises(FetchError, match=words) as info:
        fetch.fetch("http://innocent.example/cat.png", IMAGE)
    assert "innocent.example" in str(info.value) and asked == ["innocent.example"]


def test_one_private_address_among_public_ones_is_enough_to_refuse(monkeypatch):
    fake_dns(monkeypatch, {"mixed.example": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(FetchError, match="10.0.0.7, a private address"):
        fetch.checked_addresses("https://mixed.example/a.png", FetchPolicy())
    fake_dns(monkeypatch, {"public.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]})
    assert len(fetch.checked_addresses("https://public.example/a.png", FetchPolicy())) == 2


def test_loopback_relaxed_for_tests_only_relaxes_loopback(monkeypatch, server):
    fake_dns(monkeypatch, {"lan.example": ["192.168.1.1"], "meta.example": ["169.254.169.254"]})
    for host in ("lan.example", "meta.example"):
        with pytest.raises(FetchError):
            fetch.fetch(f"http://{host}/x.png", IMAGE, LOOPBACK_OK)
    got = fetch.fetch(server.url("/fox.png"), IMAGE, LOOPBACK_OK)
    assert got.suffix == ".png" and got.content_type == "image/png" and got.data == png_bytes()


def test_redirects_are_followed_hop_by_hop_and_each_hop_is_checked(monkeypatch, server):
    fake_dns(monkeypatch, {"metadata.example": ["169.254.169.254"], "lan.example": ["10.0.0.2"]})
    server.routes.redirect("/to-fox", "/fox.png")
    server.routes.redirect("/to-metadata", "http://metadata.example/latest/meta-data/", status=307)
    server.routes.redirect("/to-lan", "http://lan.example:8080/admin")
    server.routes.redirect("/to-ip", "http://169.254.169.254/latest/")
    server.routes.redirect("/to-file", "file:///etc/passwd")
    assert fetch.fetch(server.url("/to-fox"), IMAGE, LOOPBACK_OK).url == server.url("/fox.png")
    for path, words in (("/to-metadata", "link-local"), ("/to-lan", "private"), ("/to-ip", "link-local"),
                        ("/to-file", "file URLs are not fetched")):
        with pytest.raises(FetchError, match=words):
            fetch.fetch(server.url(path), IMAGE, LOOPBACK_OK)
    server.routes.redirect("/loop", "/loop")
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch.fetch(server.url("/loop"), IMAGE, LOOPBACK_OK)
    assert server.routes.seen.count("/loop") == 6


def test_the_answer_must_be_what_the_field_needs(server):
    with pytest.raises(FetchError, match="expected an image, the server says text/html"):
        fetch.fetch(server.url("/page.html"), IMAGE, LOOPBACK_OK)
    with pytest.raises(FetchError, match="not an image PIL can read"):
        fetch.fetch(server.url("/fake.png"), IMAGE, LOOPBACK_OK)
    with pytest.raises(FetchError, match="expected audio or video"):
        fetch.fetch(server.url("/fox.png"), AUDIO, LOOPBACK_OK)
    with pytest.raises(FetchError, match="not an audio or video file"):  # a playlist would make ffmpeg fetch URLs
        fetch.fetch(server.url("/playlist.mp3"), AUDIO, LOOPBACK_OK)
    with pytest.raises(FetchError, match="HTTP 418"):
        fetch.fetch(server.url("/teapot.png"), IMAGE, LOOPBACK_OK)
    assert fetch.fetch(server.url("/song.wav"), AUDIO, LOOPBACK_OK).suffix == ".wav"
    assert fetch.fetch(server.url("/clip.mp4"), AUDIO, LOOPBACK_OK).suffix == ".m4a"


def test_size_and_time_are_capped(server):
    with pytest.raises(FetchError, match="the limit is"):
        fetch.fetch(server.url("/huge.png"), IMAGE, LOOPBACK_OK)
    with pytest.raises(FetchError, match="at most 8192 a side"):
        fetch.fetch(server.url("/bomb.png"), IMAGE, LOOPBACK_OK)
    started = time.monotonic()
    with pytest.raises(FetchError, match="took too long"):
        fetch.fetch(server.url("/slow.png"), IMAGE, FetchPolicy(allow_loopback=True, timeout=1.0))
    assert time.monotonic() - started < 5


def test_a_body_larger_than_its_kind_allows_is_cut_off(server, monkeypatch):
    """The limit holds while reading too, not only by Content-Length."""
    monkeypatch.setitem(fetch.MAX_BYTES, IMAGE, 1000)
    server.routes.add("/long.png", png_bytes() + b"\x00" * 5000, "image/png", length=False)
    with pytest.raises(FetchError, match="larger than the limit of 1000 bytes"):
        fetch.fetch(server.url("/long.png"), IMAGE, LOOPBACK_OK)


@pytest.fixture
def host_opts(monkeypatch):
    modules, shared = ModuleType("modules"), ModuleType("modules.shared")
    shared.opts = SimpleNamespace(api_enable_requests=True, api_forbid_local_requests=True, api_useragent="")
    modules.shared = shared
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    return shared.opts


def test_the_web_ui_options_apply(host_opts, server, monkeypatch):
    assert fetch.host_policy() == FetchPolicy()
    with pytest.raises(FetchError, match="loopback"):
        fetch.fetch(server.url("/fox.png"), IMAGE, fetch.host_policy())
    host_opts.api_forbid_local_requests = False  # the admin allowed local URLs for the web UI's API
    host_opts.api_useragent = "studio-bot/1"
    assert fetch.fetch(server.url("/fox.png"), IMAGE, fetch.host_policy()).data == png_bytes()
    fake_dns(monkeypatch, {"group.example": ["239.1.2.3"]})
    with pytest.raises(FetchError, match="multicast"):  # never an HTTP server, whatever the option says
        fetch.fetch("http://group.example/a.png", IMAGE, fetch.host_policy())
    host_opts.api_enable_requests = False
    with pytest.raises(FetchError, match="switched off"):
        fetch.fetch(server.url("/fox.png"), IMAGE, fetch.host_policy())


def test_fetch_to_file_keeps_one_file_per_content(server, tmp_path):
    a = outputs.fetch_to_file(server.url("/fox.png"), IMAGE, tmp_path, LOOPBACK_OK)
    server.routes.redirect("/again", "/fox.png")
    b = outputs.fetch_to_file(server.url("/again"), IMAGE, tmp_path, LOOPBACK_OK)
    assert a == b and a.read_bytes() == png_bytes() and a.parent == tmp_path and a.suffix == ".png"


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "http://", "http://a b/c",
                                 "http://example.com:99999/", "gopher://127.0.0.1:6379/_INFO"])
def test_only_well_formed_http_urls(url):
    with pytest.raises(FetchError):
        fetch.fetch(url, IMAGE)


def test_address_rules_agree_with_the_web_ui_verify_url_for_public_and_local():
    """A1111's verify_url refuses every non-global address; so do we (with forbid_local, the default)."""
    for text in ("8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"):
        assert fetch.address_problem(ipaddress.ip_address(text), FetchPolicy()) is None
    for text in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fc00::1", "100.64.0.1", "192.0.2.1"):
        ip = ipaddress.ip_address(text)
        assert not ip.is_global and fetch.address_problem(ip, FetchPolicy()) is not None


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch, server):
    """DNS rebinding: a second lookup could answer differently, so there is none; the checked address is used."""
    answers = iter([["127.0.0.1"]])
    asked: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        asked.append(host)
        address = next(answers, ["10.0.0.1"])[0]
        return [(2, 1, 6, "", (address, port))]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", getaddrinfo)
    got = fetch.fetch(f"http://rebind.example:{server.port}/fox.png", IMAGE, LOOPBACK_OK)
    assert got.data == png_bytes() and asked == ["rebind.example"]


def test_https_checks_the_certificate_against_the_host_name(tmp_path, monkeypatch):
    from netfixtures import self_signed_cert

    cert, key = self_signed_cert(tmp_path, "tls.example")
    fake_dns(monkeypatch, {"tls.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    with LocalServer(tls=(cert, key)) as server:
        server.routes.add("/fox.png", png_bytes(), "image/png")
        url = server.url("/fox.png", "tls.example")
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            fetch.fetch(url, IMAGE, LOOPBACK_OK)  # not signed by anyone this machine trusts
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # now it is
        assert fetch.fetch(url, IMAGE, LOOPBACK_OK).data == png_bytes()
        with pytest.raises(FetchError, match="match|mismatch"):
            fetch.fetch(server.url("/fox.png", "other.example"), IMAGE, LOOPBACK_OK)


def test_json_for_a_parseq_manifest_is_typed_checked_and_capped(server, monkeypatch):
    from deforum_wan.renderer.fetch import JSON

    body = b'{"rendered_frames": [{"frame": 0, "zoom": 1.0}]}'
    server.routes.add("/m.json", body, "application/json; charset=utf-8")
    server.routes.add("/m.txt", body, "text/plain")
    server.routes.add("/broken.json", b'{"rendered_frames": [', "application/json")
    server.routes.add("/big.json", b"[" + b"0," * 600 + b"0]", "application/json")
    got = fetch.fetch(server.url("/m.json"), JSON, LOOPBACK_OK)
    assert got.data == body and got.suffix == ".json"
    assert fetch.fetch(server.url("/m.txt"), JSON, LOOPBACK_OK).data == body  # file hosts serve .json as text
    with pytest.raises(FetchError, match="expected JSON, the server says text/html"):
        fetch.fetch(server.url("/page.html"), JSON, LOOPBACK_OK)
    with pytest.raises(FetchError, match="not JSON"):
        fetch.fetch(server.url("/broken.json"), JSON, LOOPBACK_OK)
    monkeypatch.setitem(fetch.MAX_BYTES, JSON, 1000)
    with pytest.raises(FetchError, match="limit of 1000 bytes|the limit is 1000 bytes"):
        fetch.fetch(server.url("/big.json"), JSON, LOOPBACK_OK)
    with pytest.raises(FetchError, match="loopback"):
        fetch.fetch(server.url("/m.json"), JSON)
