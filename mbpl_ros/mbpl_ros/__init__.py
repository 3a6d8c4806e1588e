"""mbpl_ros: model-based local-policy learning (LQR-FLM, MDGPS) for ROS 2 robots."""

__version__ = "0.1.0"
