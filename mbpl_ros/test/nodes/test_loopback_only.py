"""Reachable only from this machine: with the package's Fast DDS profile (mbpl_ros.dds) and
the discovery range a user's shell has (unset), every UDP socket of a running graph is bound
to a loopback address, none to 0.0.0.0 or an external interface, and the graph works
(discovery and data over loopback).

The graph runs in a network namespace of its own that has only a loopback interface, so that
even a profile that failed to load could send nothing off this machine; without the profile
the same graph binds 0.0.0.0 there, which shows the check can fail. Our own runs keep
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (mbpl_ros/dds says what that costs)."""
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys

import pytest

from mbpl_ros.dds import LOOPBACK_PROFILE, loopback_environment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Two nodes in one process: a publisher and a subscriber that must hear it over DDS; then
#: the addresses of every UDP socket the process holds, as JSON.
GRAPH = """
import json, os, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "test", "nodes"))
import rclpy
from std_msgs.msg import String
from test_loopback_only import udp_sockets
rclpy.init()
talker, listener = rclpy.create_node("talker"), rclpy.create_node("listener")
heard = []
listener.create_subscription(String, "chatter", heard.append, 10)
publisher = talker.create_publisher(String, "chatter", 10)
deadline = time.monotonic() + 20.0
while not heard and time.monotonic() < deadline:
    publisher.publish(String(data="hello"))
    rclpy.spin_once(listener, timeout_sec=0.1)
print(json.dumps({"heard": len(heard), "bound": udp_sockets(os.getpid())}))
rclpy.shutdown()
"""


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
    # our runs (a range is set): the profile only, the range as it is
    assert loopback_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(LOOPBACK_PROFILE)}
    # a user's shell (no range): the profile and the range it binds loopback with
    assert loopback_environment({}) == {"FASTDDS_DEFAULT_PROFILES_FILE": str(LOOPBACK_PROFILE),
                                        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"}
    # a profile of the user's is left alone
    assert loopback_environment({"FASTRTPS_DEFAULT_PROFILES_FILE": "/my/profile.xml"}) == {}
    copy = tmp_path / "share" / "fastdds_loopback.xml"      # e.g. the installed one, set by hand
    copy.parent.mkdir()
    copy.write_bytes(LOOPBACK_PROFILE.read_bytes())
    assert loopback_environment({"FASTDDS_DEFAULT_PROFILES_FILE": str(copy),
                                 "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}) == {}


def _graph_in_own_network(profile: bool) -> dict:
    """Run GRAPH in a new network namespace (only `lo`), as a user's shell would: no discovery
    range set, the package's profile or none."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here (unshare -n needs CAP_SYS_ADMIN)")
    env = {key: value for key, value in os.environ.items() if key not in (
        "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")}
    env.update(loopback_environment(env) if profile else {})
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1" "$2"',
         sys.executable, GRAPH, REPO], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _off_loopback(bound):
    return [(address, port) for address, port in bound
            if not ipaddress.ip_address(address).is_loopback]


@pytest.mark.timeout(120)
def test_every_udp_socket_of_a_graph_with_the_profile_is_bound_to_loopback():
    graph = _graph_in_own_network(profile=True)
    assert graph["heard"] > 0, "the nodes did not hear each other over loopback"
    assert len(graph["bound"]) >= 2, graph               # discovery and user data at least
    assert _off_loopback(graph["bound"]) == [], f"UDP sockets bound off loopback: {graph['bound']}"


@pytest.mark.timeout(120)
def test_without_the_profile_the_same_graph_binds_every_interface():
    graph = _graph_in_own_network(profile=False)
    assert graph["heard"] > 0
    assert _off_loopback(graph["bound"]), graph["bound"]
