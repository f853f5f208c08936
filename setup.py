"""specvla_ros: speculative-decoding VLA control for ROS 2 robot arms."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "specvla_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    # the project root is the source root (a .pth entry in editable installs); the data
    # folders are package data of specvla_ros, not packages of their own
    package_dir={"": "."},
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["data/**/*"]},
    include_package_data=False,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
    ],
    python_requires=">=3.10",
    install_requires=["numpy", "torch", "transformers", "tokenizers", "safetensors", "pyyaml"],
    zip_safe=False,
    maintainer="specvla_ros developers",
    description="Speculative-decoding VLA policy node with a safety gate for ROS 2 arms",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "specvla_bench = specvla_ros.bench.decode_bench:main",
            "specvla_node = specvla_ros.ros.policy_node:main",
            "specvla_policy_server = specvla_ros.core.serving.server:main",
            "specvla_sim = specvla_ros.ros.sim_node:main",
            "specvla_bringup = specvla_ros.ros.bringup:main",
            "specvla_eval = specvla_ros.apps.closed_loop_eval:main",
            "specvla_train = specvla_ros.train.cli:main",
            "specvla_bag = specvla_ros.ros.bag.cli:main",
        ],
    },
)
