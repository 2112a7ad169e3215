"""The explainers of this area are registered under their exact names, with their family and sign."""

import pytest

from mammoxai.explainers import available, create, explainer_class

EXPECTED = {
    "occlusion": ("perturbation", True), "rise": ("perturbation", False), "lime": ("perturbation", True),
    "kernel_shap": ("perturbation", True), "attention_rollout": ("attention", False),
    "attention_last": ("attention", False), "fgsm": ("robustness", True), "pgd_linf": ("robustness", True),
    "pgd_l2": ("robustness", True), "wasserstein": ("robustness", True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered(name):
    assert name in available()
    cls = explainer_class(name)
    assert (cls.family, cls.signed) == EXPECTED[name]
    assert cls.display_name
    explainer = create(name)  # defaults are valid
    assert explainer.params["seed"] == 0
    with pytest.raises(ValueError, match="unknown parameter"):
        create(name, no_such_parameter=1)
