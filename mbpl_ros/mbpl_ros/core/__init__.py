"""
Algorithms of mbpl_ros: numpy/scipy/torch only, no ROS import.

Shapes follow one convention throughout: T time steps, dX state dimension,
dU action dimension, N rollouts, M conditions.
"""
