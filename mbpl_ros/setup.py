from glob import glob

from setuptools import find_packages, setup

package_name = "mbpl_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    # Said explicitly so that `pip install -e` puts this folder on sys.path (a .pth entry,
    # not an import hook): the repository's folder of the same name, on sys.path as the
    # current directory, then never shadows the package as a namespace package.
    package_dir={"": "."},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", sorted(glob("launch/*.launch.py"))),
        ("share/" + package_name + "/config", sorted(glob("config/*.yaml"))),
        ("share/" + package_name + "/urdf", sorted(glob("urdf/*"))),
        ("share/" + package_name + "/dds", sorted(glob("mbpl_ros/dds/*.xml"))),
    ],
    package_data={"mbpl_ros.dds": ["*.xml"]},
    # Dependencies come from package.xml (rosdep) on ROS machines, requirements.txt elsewhere.
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="mbpl_ros maintainers",
    maintainer_email="mbpl-ros@example.com",
    description="Model-based local-policy learning (LQR-FLM, MDGPS) for ROS 2 robots",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "mbpl = mbpl_ros.cli:main",
            "sim_robot = mbpl_ros.nodes.sim_robot:main",
            "lqr_controller = mbpl_ros.nodes.lqr_controller:main",
            "sample_collector = mbpl_ros.nodes.sample_collector:main",
            "dynamics_fitter = mbpl_ros.nodes.dynamics_fitter:main",
            "gps_trainer = mbpl_ros.nodes.gps_trainer:main",
        ],
    },
)
