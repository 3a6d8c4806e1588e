"""Reachable only from this machine: with the package's Fast DDS profile (mbpl_ros.dds, set
up by conftest as by the Makefile, CI and `mbpl sim`), every UDP socket of a running graph —
node processes and this process — is bound to a loopback address, none to 0.0.0.0 or an
external interface, and the graph still works (discovery and data over loopback)."""
import ipaddress
import os
import socket
import struct
import time

import pytest
from sensor_msgs.msg import JointState

from loop_helpers import Recorder, create_probe, spinning, wait_until
from mbpl_ros.dds import LOOPBACK_PROFILE, is_loopback_profile, loopback_environment
from mbpl_ros.nodes import wire
from test_fault_injection import NodeProcesses


def udp_sockets(pid):
    """(address, port) of every UDP socket process `pid` holds (/proc/net/udp, udp6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    bound = []
    for table, size in ((f"/proc/{pid}/net/udp", 4), (f"/proc/{pid}/net/udp6", 16)):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[9] not in inodes:
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                # /proc writes each 32-bit word in host order
                raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0])
                               for i in range(0, len(raw), 4))
                text = socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, raw)
                bound.append((text, int(port, 16)))
    return bound


def test_the_loopback_environment(tmp_path):
    assert loopback_environment() == {} or \
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SYSTEM_DEFAULT"
    # a profile of the user's is left alone
    assert loopback_environment({"FASTRTPS_DEFAULT_PROFILES_FILE": "/my/profile.xml"}) == {}
    assert loopback_environment({}) == {"FASTDDS_DEFAULT_PROFILES_FILE": str(LOOPBACK_PROFILE),
                                        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"}
    copy = tmp_path / "share" / "fastdds_loopback.xml"      # e.g. the installed one, set by hand
    copy.parent.mkdir()
    copy.write_bytes(LOOPBACK_PROFILE.read_bytes())
    assert loopback_environment({"FASTDDS_DEFAULT_PROFILES_FILE": str(copy),
                                 "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}) == \
        {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"}


@pytest.mark.timeout(60)
def test_every_udp_socket_of_a_running_graph_is_bound_to_loopback(ros_context, tmp_path):
    if not is_loopback_profile(os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")):
        pytest.skip("a Fast DDS profile of the user's is in use")
    nodes = NodeProcesses(tmp_path, [])
    probe = create_probe(ros_context)
    states = Recorder()
    probe.create_subscription(JointState, wire.JOINT_STATES_TOPIC, states, 10)
    try:
        nodes.start("sim_robot", "-p", "mode:=realtime", "-p", "control_rate_hz:=20.0")
        with spinning(ros_context, [probe]):
            wait_until(lambda: len(states.items) >= 5, timeout=30,
                       what="joint states over loopback")
            time.sleep(0.5)
            found = {"sim_robot": udp_sockets(nodes.processes["sim_robot"].pid),
                     "this process": udp_sockets(os.getpid())}
    finally:
        nodes.stop_all()
    for who, bound in found.items():
        assert len(bound) >= 2, (who, bound)              # discovery and user data at least
        outside = [(address, port) for address, port in bound
                   if not ipaddress.ip_address(address).is_loopback]
        assert outside == [], f"{who} has UDP sockets bound off loopback: {outside}"
