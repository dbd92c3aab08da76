"""Reference parsing and name validation.

The cases restate facts from the Docker reference implementation's own tests
(github.com/distribution/reference ``reference_test.go`` and
``normalize_test.go``), adapted where this library deliberately differs: the
255-character limit counts registry and repository together, unknown but
well-formed digest algorithms parse, and ``familiar`` never produces a short
form that would parse back to something else.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from dockerconnect._digest import Digest
from dockerconnect._reference import Reference, validate_repository, validate_tag
from dockerconnect.errors import DigestInvalid, InvalidInput, NameInvalid, TagInvalid

SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512 = "sha512:" + "f" * 128
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"


class Valid(NamedTuple):
    text: str
    registry: str
    repository: str
    tag: str | None
    digest: str | None
    canonical: str
    familiar: str


VALID = [
    # Docker Hub normalisation.
    Valid("nginx", "docker.io", "library/nginx", None, None,
          "docker.io/library/nginx", "nginx"),
    Valid("nginx:1.25", "docker.io", "library/nginx", "1.25", None,
          "docker.io/library/nginx:1.25", "nginx:1.25"),
    Valid("docker.io/library/nginx:latest", "docker.io", "library/nginx", "latest", None,
          "docker.io/library/nginx:latest", "nginx:latest"),
    Valid("docker.io/nginx", "docker.io", "library/nginx", None, None,
          "docker.io/library/nginx", "nginx"),
    Valid("index.docker.io/debian", "docker.io", "library/debian", None, None,
          "docker.io/library/debian", "debian"),
    Valid("index.docker.io/docker/docker", "docker.io", "docker/docker", None, None,
          "docker.io/docker/docker", "docker/docker"),
    Valid("library/ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", None, None,
          "docker.io/library/ubuntu-12.04-base", "ubuntu-12.04-base"),
    Valid("user/app", "docker.io", "user/app", None, None, "docker.io/user/app", "user/app"),
    Valid(f"user/app@{SHA256}", "docker.io", "user/app", None, SHA256,
          f"docker.io/user/app@{SHA256}", f"user/app@{SHA256}"),
    Valid(f"busybox:latest@{SHA256}", "docker.io", "library/busybox", "latest", SHA256,
          f"docker.io/library/busybox:latest@{SHA256}", f"busybox:latest@{SHA256}"),
    Valid("store/foo/bar", "docker.io", "store/foo/bar", None, None,
          "docker.io/store/foo/bar", "store/foo/bar"),
    # Only a single-level library path is shortened.
    Valid("docker.io/library/foo/bar", "docker.io", "library/foo/bar", None, None,
          "docker.io/library/foo/bar", "library/foo/bar"),
    Valid("other/library", "docker.io", "other/library", None, None,
          "docker.io/other/library", "other/library"),
    Valid("test_com/foo", "docker.io", "test_com/foo", None, None,
          "docker.io/test_com/foo", "test_com/foo"),
    # A name without "/" is always a Docker Hub path, whatever it looks like.
    Valid("localhost", "docker.io", "library/localhost", None, None,
          "docker.io/library/localhost", "localhost"),
    Valid("localhost:5000", "docker.io", "library/localhost", "5000", None,
          "docker.io/library/localhost:5000", "localhost:5000"),
    Valid("example.com", "docker.io", "library/example.com", None, None,
          "docker.io/library/example.com", "example.com"),
    Valid("test.com:tag", "docker.io", "library/test.com", "tag", None,
          "docker.io/library/test.com:tag", "test.com:tag"),
    Valid("192.168.1.1", "docker.io", "library/192.168.1.1", None, None,
          "docker.io/library/192.168.1.1", "192.168.1.1"),
    Valid("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None,
          "docker.io/library/foo_bar.com:8080", "foo_bar.com:8080"),
    # Registries: a first component with ".", ":" or uppercase, or "localhost".
    Valid("localhost/foo", "localhost", "foo", None, None, "localhost/foo", "localhost/foo"),
    Valid("localhost:5000/foo:bar", "localhost:5000", "foo", "bar", None,
          "localhost:5000/foo:bar", "localhost:5000/foo:bar"),
    Valid("test:5000/repo", "test:5000", "repo", None, None, "test:5000/repo", "test:5000/repo"),
    Valid(f"test:5000/repo:tag@{SHA256}", "test:5000", "repo", "tag", SHA256,
          f"test:5000/repo:tag@{SHA256}", f"test:5000/repo:tag@{SHA256}"),
    Valid("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux",
          "some-long-tag", None, "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
          "sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
    Valid("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io",
          "test.example.com/my-app", "test.example.com", None,
          "b.gcr.io/test.example.com/my-app:test.example.com",
          "b.gcr.io/test.example.com/my-app:test.example.com"),
    Valid("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None,
          "xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage:xn--n3h.com"),
    Valid(f"xn--7o8h.com/myimage@{SHA512}", "xn--7o8h.com", "myimage", None, SHA512,
          f"xn--7o8h.com/myimage@{SHA512}", f"xn--7o8h.com/myimage@{SHA512}"),
    Valid("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050", None,
          "192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo:5050"),
    Valid("127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian", None, None,
          "127.0.0.1:5000/library/debian", "127.0.0.1:5000/library/debian"),
    Valid("[2001:db8::1]/repo", "[2001:db8::1]", "repo", None, None,
          "[2001:db8::1]/repo", "[2001:db8::1]/repo"),
    Valid("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", "tag", None,
          "[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo:tag"),
    Valid(f"[::1]:5000/repo@{SHA256}", "[::1]:5000", "repo", None, SHA256,
          f"[::1]:5000/repo@{SHA256}", f"[::1]:5000/repo@{SHA256}"),
    Valid("[fc00::1]:5000/docker/docker", "[fc00::1]:5000", "docker/docker", None, None,
          "[fc00::1]:5000/docker/docker", "[fc00::1]:5000/docker/docker"),
    Valid("Foo/bar", "Foo", "bar", None, None, "Foo/bar", "Foo/bar"),
    Valid("DOCKER/docker", "DOCKER", "docker", None, None, "DOCKER/docker", "DOCKER/docker"),
    # Tags may hold uppercase; the repository may not.
    Valid("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None,
          "docker.io/library/lowercase:Uppercase", "lowercase:Uppercase"),
    Valid("nginx:_", "docker.io", "library/nginx", "_", None,
          "docker.io/library/nginx:_", "nginx:_"),
    # Separators.
    Valid("dock__er/docker", "docker.io", "dock__er/docker", None, None,
          "docker.io/dock__er/docker", "dock__er/docker"),
    Valid("docker---rules/docker", "docker.io", "docker---rules/docker", None, None,
          "docker.io/docker---rules/docker", "docker---rules/docker"),
    Valid("d/t", "docker.io", "d/t", None, None, "docker.io/d/t", "d/t"),
    # A 64-hex path is only an image ID when bare; familiar keeps it unambiguous.
    Valid(f"docker.io/{HEX64}", "docker.io", f"library/{HEX64}", None, None,
          f"docker.io/library/{HEX64}", f"library/{HEX64}"),
    Valid(HEX64[:63], "docker.io", f"library/{HEX64[:63]}", None, None,
          f"docker.io/library/{HEX64[:63]}", HEX64[:63]),
    # Short forms that would read back as a registry keep "docker.io/".
    Valid("docker.io/foo.bar/baz", "docker.io", "foo.bar/baz", None, None,
          "docker.io/foo.bar/baz", "docker.io/foo.bar/baz"),
    Valid("docker.io/localhost/app:1", "docker.io", "localhost/app", "1", None,
          "docker.io/localhost/app:1", "docker.io/localhost/app:1"),
    # Limits: 255 characters of registry/repository, 128 of tag.
    Valid("example.com/" + "a" * 243 + ":" + "t" * 128, "example.com", "a" * 243, "t" * 128,
          None, "example.com/" + "a" * 243 + ":" + "t" * 128,
          "example.com/" + "a" * 243 + ":" + "t" * 128),
    Valid("a" * 237, "docker.io", "library/" + "a" * 237, None, None,
          "docker.io/library/" + "a" * 237, "a" * 237),
]  # fmt: skip


@pytest.mark.parametrize("case", VALID, ids=[c.text[:60] for c in VALID])
def test_parse_valid(case: Valid) -> None:
    ref = Reference.parse(case.text)
    assert ref.registry == case.registry
    assert ref.repository == case.repository
    assert ref.tag == case.tag
    assert ref.digest == (None if case.digest is None else Digest.parse(case.digest))
    assert str(ref) == case.canonical
    assert ref.familiar == case.familiar
    assert ref.name == f"{case.registry}/{case.repository}"
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar) == ref


INVALID: list[tuple[str, type[InvalidInput]]] = [
    ("", NameInvalid),
    (":justtag", NameInvalid),
    (f"@{SHA256}", NameInvalid),
    ("/nginx", NameInvalid),
    ("nginx/", NameInvalid),
    ("docker///docker", NameInvalid),
    ("docker.io/docker///docker", NameInvalid),
    ("Uppercase:tag", NameInvalid),
    ("docker/Docker", NameInvalid),
    ("docker.io/docker/Docker", NameInvalid),
    ("test:5000/Uppercase/lowercase:tag", NameInvalid),
    ("aa/asdf$$^/aa", NameInvalid),
    ("https://github.com/docker/docker", NameInvalid),
    ("-docker", NameInvalid),
    ("-docker/docker", NameInvalid),
    ("docker-/docker", NameInvalid),
    ("-docker.io/docker/docker", NameInvalid),
    ("_docker/_docker", NameInvalid),
    ("____/____", NameInvalid),
    ("dock..er/docker", NameInvalid),
    ("dock_.er/docker", NameInvalid),
    ("dock-.er/docker", NameInvalid),
    ("dock___er/docker", NameInvalid),
    ("foo_bar.com/x", NameInvalid),
    ("foo:bar:baz", NameInvalid),
    ("localhost:5000:6000/foo", NameInvalid),
    ("[2001:db8::1]", NameInvalid),
    ("[2001:db8::1]:5000", NameInvalid),
    ("[2001:db8::1]:tag", NameInvalid),
    ("[fc00::1]:5000", NameInvalid),
    ("fc00::1:5000/debian", NameInvalid),
    ("[fe80::1%eth0]:5000/repo", NameInvalid),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", NameInvalid),
    (HEX64, NameInvalid),
    ("nginx\n", NameInvalid),
    ("ngïnx", NameInvalid),
    ("example.com/" + "a" * 244, NameInvalid),
    ("a" * 238, NameInvalid),
    ("a/" * 128 + "a:tag", NameInvalid),
    ("nginx:", TagInvalid),
    ("nginx:-foo", TagInvalid),
    ("nginx:.foo", TagInvalid),
    ("nginx:tag with space", TagInvalid),
    ("nginx:\u0661", TagInvalid),  # an Arabic-Indic digit: \w in Python, not in Go
    ("nginx:" + "a" * 129, TagInvalid),
    ("nginx@", DigestInvalid),
    ("nginx@sha256", DigestInvalid),
    ("repo@sha256:" + "f" * 34, DigestInvalid),
    ("repo@sha256:" + "F" * 64, DigestInvalid),
    (f"repo@{SHA256}@{SHA256}", DigestInvalid),
    ("nginx:latest@", DigestInvalid),
]


@pytest.mark.parametrize(("text", "error"), INVALID, ids=[t[:60] for t, _ in INVALID])
def test_parse_invalid(text: str, error: type[InvalidInput]) -> None:
    with pytest.raises(error) as info:
        Reference.parse(text)
    assert isinstance(info.value, ValueError)
    assert info.value.message


@pytest.mark.parametrize("text", ["Uppercase", "docker/Docker", "localhost/Foo:tag"])
def test_uppercase_repository_says_lowercase(text: str) -> None:
    with pytest.raises(NameInvalid, match="lowercase"):
        Reference.parse(text)


@pytest.mark.parametrize("value", [None, 1, b"nginx", ["nginx"], object()])
def test_parse_non_string(value: Any) -> None:
    with pytest.raises(NameInvalid):
        Reference.parse(value)


def test_parse_returns_a_reference_unchanged() -> None:
    ref = Reference.parse("nginx")
    assert Reference.parse(ref) is ref


def test_no_default_tag() -> None:
    ref = Reference.parse("nginx")
    assert ref.tag is None
    assert ref.reference is None
    assert str(ref) == "docker.io/library/nginx"


def test_reference_prefers_digest() -> None:
    assert Reference.parse("nginx:1.25").reference == "1.25"
    assert Reference.parse(f"nginx:1.25@{SHA256}").reference == SHA256
    assert Reference.parse(f"nginx@{SHA256}").reference == SHA256


def test_other_wellformed_digest_algorithms_parse() -> None:
    ref = Reference.parse(
        "example.com/app@multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"
    )
    assert ref.digest is not None
    assert ref.digest.algorithm == "multihash+base58"
    assert not ref.digest.verifiable


def test_value_semantics() -> None:
    a = Reference.parse("nginx:1")
    b = Reference("docker.io", "library/nginx", "1")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, Reference.parse("nginx:2")}) == 2
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.tag = "2"  # type: ignore[misc]
    assert repr(a) == "Reference('docker.io/library/nginx:1')"


def test_construction_validates() -> None:
    ref = Reference("localhost:5000", "foo", "bar", Digest.parse(SHA256))
    assert str(ref) == f"localhost:5000/foo:bar@{SHA256}"
    with pytest.raises(TagInvalid):
        attrs.evolve(ref, tag="-bad")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"registry": "docker.io", "repository": "nginx"}, NameInvalid),
        ({"registry": "index.docker.io", "repository": "library/nginx"}, NameInvalid),
        ({"registry": "foo", "repository": "bar"}, NameInvalid),
        ({"registry": "", "repository": "bar"}, NameInvalid),
        ({"registry": "example.com/x", "repository": "bar"}, NameInvalid),
        ({"registry": "example.com", "repository": "Bar"}, NameInvalid),
        ({"registry": "example.com", "repository": ""}, NameInvalid),
        ({"registry": "example.com", "repository": "a" * 244}, NameInvalid),
        ({"registry": 1, "repository": "bar"}, NameInvalid),
        ({"registry": "example.com", "repository": None}, NameInvalid),
        ({"registry": "example.com", "repository": "bar", "tag": ""}, TagInvalid),
        ({"registry": "example.com", "repository": "bar", "tag": 1}, TagInvalid),
        ({"registry": "example.com", "repository": "bar", "digest": SHA256}, DigestInvalid),
    ],
)
def test_construction_rejects(kwargs: dict[str, Any], error: type[InvalidInput]) -> None:
    with pytest.raises(error):
        Reference(**kwargs)


# --- validate_repository / validate_tag -------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "nginx",
        "library/nginx",
        "a/b/c/d",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a--b",
        "a---------b",
        "a0.b1_c2__d3-e4",
        "xn--n3h",
        HEX64,  # only the reference grammar treats bare hex specially
        "a" * 255,
        "ab/" * 84 + "abc",
    ],
)
def test_validate_repository_accepts(name: str) -> None:
    assert validate_repository(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "empty"),
        ("a" * 256, "255"),
        ("ab/" * 85 + "a", "255"),
        ("a___b", "separator"),
        ("a..b", "separator"),
        ("a._b", "separator"),
        ("a.-b", "separator"),
        ("a-", "end"),
        ("a.", "end"),
        ("-a", "start"),
        (".a", "start"),
        ("_a", "start"),
        ("..", "start"),
        ("/a", "empty"),
        ("a/", "empty"),
        ("a//b", "empty"),
        ("/", "empty"),
        ("A", "lowercase"),
        ("library/Nginx", "lowercase"),
        ("a b", "' '"),
        ("a:b", "':'"),
        ("a@b", "'@'"),
        ("ü", "'ü'"),
        ("a\n", "'\\\\n'"),
        ("docker.io/library/nginx:latest", "':'"),
    ],
)
def test_validate_repository_rejects(name: str, says: str) -> None:
    with pytest.raises(NameInvalid, match=says):
        validate_repository(name)


@pytest.mark.parametrize(
    "tag", ["a", "A", "_", "0", "latest", "v1.2.3-rc_1", "1.0--x..y", "a" * 128, "_" + "-" * 127]
)
def test_validate_tag_accepts(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    ("tag", "says"),
    [
        ("", "empty"),
        ("a" * 129, "128"),
        ("-a", "start"),
        (".a", "start"),
        ("a b", "' '"),
        ("a:b", "':'"),
        ("a/b", "'/'"),
        ("a@b", "'@'"),
        ("ä", "'ä'"),
        ("a\n", "'\\\\n'"),
        ("\uff11", "'\uff11'"),  # fullwidth digit one
    ],
)
def test_validate_tag_rejects(tag: str, says: str) -> None:
    with pytest.raises(TagInvalid, match=says):
        validate_tag(tag)


@pytest.mark.parametrize("value", [None, 1, b"a", ["a"]])
def test_validators_reject_non_strings(value: Any) -> None:
    with pytest.raises(NameInvalid):
        validate_repository(value)
    with pytest.raises(TagInvalid):
        validate_tag(value)


# --- properties -------------------------------------------------------------------------

_alnum = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
_separator = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = [draw(_alnum)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [draw(_separator), draw(_alnum)]
    return "".join(parts)


_domain_component = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)
_port = st.integers(0, 99999).map(lambda p: f":{p}")
_dotted = st.lists(_domain_component, min_size=2, max_size=4).map(".".join)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]").filter(lambda a: "." not in a)
registries = st.one_of(
    st.just("docker.io"),
    st.just("localhost"),
    st.tuples(st.one_of(_dotted, _ipv4, _ipv6), st.one_of(st.just(""), _port)).map("".join),
    st.tuples(st.one_of(_domain_component, st.just("localhost")), _port).map("".join),
    # A component with uppercase counts as a registry even without "." or ":".
    st.from_regex(r"[a-z0-9]{0,3}[A-Z][a-zA-Z0-9]{0,3}", fullmatch=True),
)
tags = st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}", fullmatch=True)
digests = st.one_of(
    st.binary(max_size=64).map(Digest.from_bytes),
    st.binary(max_size=64).map(lambda b: Digest.from_bytes(b, "sha512")),
    st.builds(
        Digest,
        st.from_regex(r"[a-z0-9]{1,8}([+._-][a-z0-9]{1,8})?", fullmatch=True),
        st.from_regex(r"[a-zA-Z0-9=_-]{1,80}", fullmatch=True),
    ).filter(lambda d: d.algorithm not in ("sha256", "sha512")),
)


@st.composite
def references(draw: st.DrawFn) -> Reference:
    registry = draw(registries)
    components = draw(st.lists(path_components(), min_size=1, max_size=4))
    if registry == "docker.io" and len(components) == 1:
        components.insert(0, draw(st.sampled_from(["library", "user"])))
    repository = "/".join(components)
    assume(len(registry) + 1 + len(repository) <= 255)
    return Reference(
        registry,
        repository,
        draw(st.none() | tags),
        draw(st.none() | digests),
    )


def _parses_or_invalid(text: object) -> None:
    try:
        ref = Reference.parse(text)  # type: ignore[arg-type]
    except InvalidInput:
        return
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar) == ref


_reference_alphabet = st.sampled_from([*"abcz09AZ._-_:/@[]%+= \n", "__", "--", "sha256:"])


@st.composite
def mutated_references(draw: st.DrawFn) -> str:
    text = str(draw(references())) if draw(st.booleans()) else draw(references()).familiar
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 3)))
        text = text[:i] + "".join(draw(st.lists(_reference_alphabet, max_size=3))) + text[j:]
    return text


@given(st.text())
@example("")
@example("\x00")
@example("a" * 10_000)
def test_any_text_parses_or_is_invalid(text: str) -> None:
    _parses_or_invalid(text)


@given(st.lists(_reference_alphabet, max_size=60).map("".join))
def test_reference_like_text_parses_or_is_invalid(text: str) -> None:
    _parses_or_invalid(text)


@given(mutated_references())
def test_near_misses_parse_or_are_invalid(text: str) -> None:
    _parses_or_invalid(text)


@given(references())
def test_round_trip(ref: Reference) -> None:
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar) == ref


@given(st.lists(path_components(), min_size=1, max_size=6).map("/".join))
def test_generated_repository_names_validate(name: str) -> None:
    assume(len(name) <= 255)
    assert validate_repository(name) == name


@given(tags)
def test_generated_tags_validate(tag: str) -> None:
    assert validate_tag(tag) == tag
