import pytest

from imgcls.registry import Registry, RegistryError


def test_register_build_list_and_errors():
    reg = Registry("thing")

    @reg.register("alpha")
    def alpha(*, x: int) -> int:
        return x * 2

    reg.register("beta")(lambda **kw: "b")
    assert reg.build("alpha", x=3) == 6
    assert reg.list() == ["alpha", "beta"] and reg.list("a*") == ["alpha"]
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("alpha")(alpha)
    with pytest.raises(RegistryError, match="Did you mean: alpha"):
        reg.get("alpah")


def test_prefix_family():
    reg = Registry("model")
    reg.register_prefix("fam/", lambda name, **kw: (name, kw))
    assert "fam/x" in reg and "other" not in reg
    assert reg.build("fam/x", k=1) == ("x", {"k": 1})
    with pytest.raises(RegistryError):
        reg.get("fam/")
