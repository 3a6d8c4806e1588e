"""
DDS on loopback only, for simulation: the package's Fast DDS profile and its environment.

DDS on loopback only, for simulation: the Fast DDS profile shipped with the package
(fastdds_loopback.xml, also installed as share/mbpl_ros/dds/fastdds_loopback.xml) and the
environment that makes a process use it. No ROS import: the variables must be set before
the first rclpy.init of a process (Fast DDS reads them once).

The profile binds every socket to 127.0.0.1, sends no multicast and discovers peers at
127.0.0.1 only. It does so fully with ROS_AUTOMATIC_DISCOVERY_RANGE unset or SYSTEM_DEFAULT:
with LOCALHOST, rmw_fastrtps adds a UDP transport of its own that binds 0.0.0.0 and the
external addresses again (it still sends nothing off the machine). So a process whose range
is unset gets the profile and SYSTEM_DEFAULT; one whose range was set (LOCALHOST in the
Makefile, CI and the tests, which must not depend on a profile file loading to stay on the
machine) keeps it and gets the profile too. A profile the user chose (either variable set)
is left alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, MutableMapping

#: The loopback-only Fast DDS profile.
LOOPBACK_PROFILE = Path(__file__).resolve().with_name("fastdds_loopback.xml")
#: Where Fast DDS 3 (and, under its old name, Fast RTPS/DDS 2) looks for a default profile file.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def is_loopback_profile(path: str) -> bool:
    """Whether `path` is this package's loopback profile (e.g. its installed copy)."""
    try:
        return Path(path).read_bytes() == LOOPBACK_PROFILE.read_bytes()
    except OSError:
        return False


def loopback_environment(environ: Mapping[str, str] = os.environ) -> dict:
    """
    Return the variables to set for a loopback-only graph, given the environment `environ`.

    They are the profile, unless one is set ({} when the user set a profile file of their
    own), and the SYSTEM_DEFAULT discovery range where no range is set.
    """
    chosen = [environ[name] for name in PROFILE_VARIABLES if environ.get(name)]
    if chosen and not all(is_loopback_profile(path) for path in chosen):
        return {}
    changes = {} if chosen else {"FASTDDS_DEFAULT_PROFILES_FILE": str(LOOPBACK_PROFILE)}
    if not environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE"):
        changes["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
    return changes


def use_loopback_only(environ: MutableMapping[str, str] = os.environ) -> dict:
    """
    Set loopback_environment(environ) in `environ`.

    Set loopback_environment(environ) in `environ` (default: this process's, before its
    first rclpy.init); returns what was set.
    """
    changes = loopback_environment(environ)
    environ.update(changes)
    return changes


__all__ = ["LOOPBACK_PROFILE", "PROFILE_VARIABLES", "is_loopback_profile", "loopback_environment",
           "use_loopback_only"]
