"""
PyBullet robots under effort control (ROS-free): used by the sim node and offline runs.

Import the modules themselves (mbpl_ros.sim.arm, ...). The robot descriptions
(mbpl_ros.robots) and the robot model (mbpl_ros.robot_model) live outside: the nodes on
hardware use them without loading the simulator.
"""
