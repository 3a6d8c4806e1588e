"""PyBullet robots under effort control (ROS-free): used by the sim node and offline runs."""
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.robots import ROBOTS, RobotSpec, robot_spec

__all__ = ["Arm", "ROBOTS", "RobotSpec", "robot_spec"]
