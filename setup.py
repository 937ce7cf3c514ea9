"""Install mobilenet_jax: `pip install -e .` (runtime) or `pip install -e '.[test,tpu]'` (tests)."""

from setuptools import find_packages, setup

TF_CPU = ("tensorflow-cpu>=2.16; platform_system == 'Linux' and platform_machine == 'x86_64'")
TF_OTHER = ("tensorflow>=2.16; platform_system != 'Linux' or platform_machine != 'x86_64'")

LINUX_X86 = "platform_system == 'Linux' and platform_machine == 'x86_64'"
TPU = f"jax[tpu]>=0.7.2,<0.13; {LINUX_X86}"
GPU_AOT = [f"jax[cuda12-local]>=0.7.2,<0.13; {LINUX_X86}",
           f"nvidia-cuda-nvcc-cu12>=12.6.85; {LINUX_X86}"]

setup(
    name="mobilenet_jax",
    version="0.1.0",
    description="Paper-faithful MobileNet V1/V2 in JAX/Flax: models, training, ablations.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mobilenet_jax", "mobilenet_jax.*"]),
    # The native CPU depthwise kernel is compiled from source on first use.
    package_data={"mobilenet_jax.ops": ["depthwise_cpu.cc"],
                  # XLA's GPU target configs, for deviceless GPU compiles (aot.py).
                  "mobilenet_jax.tools": ["gpu_specs/*.txtpb"]},
    # The common commands; each is also `python -m mobilenet_jax.<module>`.
    entry_points={"console_scripts": [
        "mobilenet-train = mobilenet_jax.main:run",
        "mobilenet-ablate = mobilenet_jax.tools.ablate:run",
        "mobilenet-report = mobilenet_jax.tools.report:run",
        "mobilenet-benchmark = mobilenet_jax.tools.benchmark:run",
        "mobilenet-summary = mobilenet_jax.tools.summary:run",
        "mobilenet-export = mobilenet_jax.tools.export:run",
        "mobilenet-aot = mobilenet_jax.tools.aot:run",
    ]},
    python_requires=">=3.11",
    install_requires=[
        # JAX 0.10 is the newest for Python 3.11, 0.11 runs the GPU machines (3.12).
        "jax>=0.7.2,<0.13",
        "flax>=0.11.2",
        "optax>=0.2.8",
        # int8 arithmetic of quantization-aware training (ops/quantize.py); 0.1.2
        # is the newest that takes Colab's flax 0.11.2.
        "qwix>=0.1.2",
        "orbax-checkpoint>=0.12.4",
        "ml-collections>=1.0.0",
        "clu>=0.0.12",
        "absl-py>=1.4.0",
        "numpy>=2.1.3",
        TF_CPU,
        TF_OTHER,
        "tensorflow-datasets>=4.9.10",
        "grain>=0.2.18",  # the input pipeline (pulls array-record)
        "importlib_resources",  # tfds builds datasets with it but does not require it
        "tensorboard>=2.16",
        "scikit-learn>=1.6.1",
        "scipy>=1.16.3",  # the reports' t intervals
        "matplotlib>=3.10.0",
    ],
    extras_require={
        # Compile-only TPU devices for `python -m mobilenet_jax.tools.aot` (jax's tpu extra
        # pins the libtpu that matches the installed jax).
        "tpu": [TPU],
        # Deviceless NVIDIA GPU compiles: the CUDA plugin without NVIDIA's runtime
        # wheels, and ptxas from the nvcc wheel.
        "gpu-aot": GPU_AOT,
        # tests/aot_test.py also needs "tpu" (README's test command); its H100 test
        # runs where "gpu-aot" is installed too.
        "test": [
            "pytest>=8.4.2",
            "keras>=3.13.2",  # the reference the models are compared with
            "pytest-xdist>=3.5",
            "nbclient>=0.10.4",
            "nbformat>=5.10",
            "ipykernel>=6.17.1",
            # tests/install_test.py builds a wheel offline (no build isolation).
            "setuptools>=61",
            "wheel",
        ],
    },
)
