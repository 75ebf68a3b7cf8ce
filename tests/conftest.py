import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# The tests compile many tiny XLA programs; without LLVM's expensive
# passes they compile several times faster. Numerics stay IEEE float32
# (parity tolerances are unaffected); benchmarks never set this.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true",
)
