"""PyBullet robots under effort control (ROS-free): used by the sim node and offline runs.

Import the modules themselves (mbpl_ros.sim.arm, mbpl_ros.sim.robots): importing the robot
descriptions must not load the simulator.
"""
