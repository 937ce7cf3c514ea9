"""Install mobilenet_jax: `pip install -e .` (runtime) or `pip install -e '.[test]'`."""

from setuptools import find_packages, setup

TF_CPU = ("tensorflow-cpu>=2.16; platform_system == 'Linux' and platform_machine == 'x86_64'")
TF_OTHER = ("tensorflow>=2.16; platform_system != 'Linux' or platform_machine != 'x86_64'")

setup(
    name="mobilenet_jax",
    version="0.1.0",
    description="Paper-faithful MobileNet V1/V2 in JAX/Flax: models, training, ablations.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mobilenet_jax", "mobilenet_jax.*"]),
    # The native CPU depthwise kernel is compiled from source on first use.
    package_data={"mobilenet_jax.ops": ["depthwise_cpu.cc"]},
    python_requires=">=3.10",
    install_requires=[
        # JAX 0.10 is the newest for Python 3.11, 0.11 runs the GPU machines (3.12).
        "jax>=0.6.0,<0.13",
        "flax>=0.10.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "ml-collections>=1.0.0",
        "clu>=0.0.12",
        "absl-py>=2.0",
        "numpy>=1.26",
        TF_CPU,
        TF_OTHER,
        "tensorflow-datasets>=4.9.6",
        "grain>=0.2.12",  # the input pipeline (pulls array-record)
        "importlib_resources",  # tfds builds datasets with it but does not require it
        "tensorboard>=2.16",
        "scikit-learn>=1.3",
        "scipy>=1.10",  # the reports' t intervals
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "keras>=3",  # the reference the models are compared with
            "pytest-xdist>=3.5",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            # tests/install_test.py builds a wheel offline (no build isolation).
            "setuptools>=61",
            "wheel",
        ],
    },
)
