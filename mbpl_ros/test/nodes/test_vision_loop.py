"""A camera in the loop over real DDS: sim_robot's images, the collector's rollouts with images,
lqr_controller running an image policy (and stopping it when the camera stops), and a tiny
image policy trained and run through the graph."""
import threading
import time

import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray

from loop_helpers import (Recorder, TrialGoalSender, create_probe, parameters, small_experiment,
                          spinning, wait_until)
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros.nodes.lqr_controller import LqrControllerNode
from mbpl_ros.nodes.sample_collector import SampleCollectorNode
from mbpl_ros.nodes.sim_robot import SimRobotNode
from mbpl_ros_interfaces import msg as interfaces

#: A tiny camera looking down at the reacher: 16x16 frames.
CAMERA = dict(eye=[0.0, 0.0, 1.2], look_at=[0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0], fov_deg=40.0,
              width=16, height=16, image_tolerance_s=0.01, target_radius=0.06)


def camera_experiment(path, **changes):
    return small_experiment(path, **{"camera": dict(CAMERA), **changes})


def _stamp_ns(msg):
    return wire.nanoseconds_from_stamp(msg.header.stamp)


@pytest.mark.timeout(60)
def test_sim_robot_publishes_each_steps_image_after_its_joint_state_stamped_like_it(ros_context,
                                                                                   tmp_path):
    """Lockstep: one image per step (and per reset), right after its joint state, with the
    same stamp; the image is the offline renderer's of the same state and target."""
    experiment = camera_experiment(tmp_path / "experiment.yaml", T=5)
    config = load_experiment(experiment)
    target = [0.15, 0.2, 0.0]
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep", target=target))
    probe = create_probe(ros_context)
    order, lock = [], threading.Lock()

    def arrived(kind):
        def on(msg):
            with lock:
                order.append((kind, _stamp_ns(msg), msg))
        return on
    probe.create_subscription(JointState, wire.JOINT_STATES_TOPIC, arrived("state"), 100)
    probe.create_subscription(Image, wire.IMAGE_TOPIC, arrived("image"), wire.image_qos())
    infos = Recorder()
    probe.create_subscription(CameraInfo, wire.CAMERA_INFO_TOPIC, infos, wire.image_qos())
    commands = probe.create_publisher(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, 100)
    efforts = [np.array([0.5, -0.3])] * 4
    with spinning(ros_context, [sim, probe]):
        wait_until(lambda: commands.get_subscription_count()
                   and probe.count_publishers(wire.IMAGE_TOPIC), what="discovery")
        with lock:
            order.clear()
        for k, effort in enumerate(efforts):   # one step at a time: its state, then its image
            commands.publish(wire.encode_effort_command(effort))
            wait_until(lambda: sum(kind == "image" for kind, _, _ in order) == k + 1,
                       what=f"the image of step {k + 1}")
        assert infos.wait_for(lambda items: len(items) >= 4)
    kinds = [kind for kind, _, _ in order]
    assert kinds == ["state", "image"] * 4
    stamps = [stamp for _, stamp, _ in order]
    assert stamps[0::2] == stamps[1::2] == [50_000_000 * k for k in range(1, 5)]
    info = infos.items[-1]
    assert (info.width, info.height, info.distortion_model) == (16, 16, "plumb_bob")
    assert info.header.frame_id == "camera" and len(info.p) == 12
    # The same render offline: the experiment's arm and camera, the same efforts from home.
    with config.make_arm() as arm:
        camera = config.make_camera(arm)
        arm.reset(sim._initial_q, target=target)
        offline = []
        for effort in efforts:
            arm.step(effort)
            offline.append(camera.render())
    received = [wire.decode_image(msg) for kind, _, msg in order if kind == "image"]
    np.testing.assert_array_equal(np.stack(received), np.stack(offline))
    red = (received[0][:, :, 0] > 180) & (received[0][:, :, 1] < 80)
    assert red.any(), "the target sphere is in the image"


@pytest.mark.timeout(60)
def test_in_realtime_sim_robot_publishes_the_camera_at_its_rate(ros_context, tmp_path):
    """camera.rate_hz 10 with control at 20 Hz: images on their own steady timer, stamped with
    the render time (increasing), each with its CameraInfo."""
    experiment = camera_experiment(tmp_path / "experiment.yaml", T=5,
                                   camera=dict(CAMERA, rate_hz=10.0))
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="realtime"))
    probe = create_probe(ros_context)
    images, infos = Recorder(), Recorder()
    probe.create_subscription(Image, wire.IMAGE_TOPIC, images, wire.image_qos())
    probe.create_subscription(CameraInfo, wire.CAMERA_INFO_TOPIC, infos, wire.image_qos())
    with spinning(ros_context, [sim, probe]):
        wait_until(lambda: images.items, what="the first image")
        first, start = len(images.items), time.monotonic()
        time.sleep(2.0)
        count, elapsed = len(images.items) - first, time.monotonic() - start
    assert 0.5 * 10 * elapsed <= count <= 1.2 * 10 * elapsed + 1, (count, elapsed)
    stamps = [_stamp_ns(msg) for msg in images.items]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert {_stamp_ns(msg) for msg in infos.items} <= set(stamps)
    assert sim.images_published >= len(images.items)


@pytest.mark.timeout(60)
def test_sim_robot_refuses_a_bad_target(ros_context, tmp_path):
    from mbpl_ros.nodes.sim_robot import SimRobotParameterError

    experiment = camera_experiment(tmp_path / "experiment.yaml", T=5)
    with pytest.raises(SimRobotParameterError, match=r"parameter 'target' is .*; "
                       r"allowed: 3 finite numbers \[x, y, z\]"):
        SimRobotNode(context=ros_context, parameter_overrides=parameters(
            experiment_config=str(experiment), target=[0.1, 0.2]))


def _trial_goal(config, trial_id, executor="controller", condition=0):
    spec = config.conditions[condition]
    return wire.encode_trial_request(wire.TrialRequest(
        trial_id=trial_id, condition=condition, iteration=0, index=0, controller_version=0,
        executor=executor, purpose="evaluation", initial_positions=np.array(spec.initial_positions),
        target=np.array(spec.target), noise=np.zeros((config.T, config.layout.dU))))


@pytest.mark.timeout(90)
def test_the_collectors_rollout_holds_each_steps_image_the_offline_renderer_draws(ros_context,
                                                                                  tmp_path):
    """A controller trial through sim_robot (sim_service reset: the sphere at the trial's
    target), lqr_controller and sample_collector: the rollout's images are those
    `mbpl train` renders for the same states, stamped like the joint states."""
    from mbpl_ros.sim.rollout import run_image_rollout

    T = 6
    experiment = camera_experiment(tmp_path / "experiment.yaml", T=T, conditions=2)
    config = load_experiment(experiment)
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep"))
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep", reset_mode="sim_service"))
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment)))
    probe = create_probe(ros_context)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    controllers = probe.create_publisher(interfaces.LinearGaussianController,
                                         wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
    requests = TrialGoalSender(probe)
    with config.make_arm() as arm:
        initial = config.initial_controllers(arm)
    with spinning(ros_context, [sim, controller, collector, probe]):
        wait_until(lambda: requests.get_subscription_count() and controllers.get_subscription_count()
                   and probe.count_publishers(wire.ROLLOUTS_TOPIC)
                   and controller._reset.service_is_ready(), what="discovery")
        controllers.publish(wire.encode_controller(wire.ControllerMessage(1, 0, initial[1])))
        requests.publish(_trial_goal(config, 7, condition=1))
        assert rollouts.wait_for(lambda items: items, timeout=30)
    rollout = rollouts.items[0]
    assert rollout.status == wire.TrialStatus.OK and rollout.images.shape == (T, 16, 16, 3)
    np.testing.assert_array_equal(rollout.image_stamps_ns,
                                  [_stamp_ns(s) for s in rollout.joint_states])
    spec = config.conditions[1]
    with config.make_arm() as arm:
        X, U, images = run_image_rollout(arm, config.layout,
                                         lambda t, x, image: initial[1].act(t, x, np.zeros(2)),
                                         spec.initial_positions, spec.target, T,
                                         config.make_camera(arm))
    np.testing.assert_allclose(rollout.X, X, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(rollout.images, images)
    assert collector.published == {"OK": 1}


@pytest.mark.timeout(60)
def test_a_step_without_an_image_drops_the_rollout_as_missing_image(ros_context, tmp_path):
    """The collector's rule: a step whose nearest image is beyond image_tolerance_s."""
    T, period = 4, 50_000_000
    experiment = camera_experiment(tmp_path / "experiment.yaml", T=T)
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), assembly_timeout_s=0.5))
    probe = create_probe(ros_context)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    states = probe.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 100)
    images = probe.create_publisher(Image, wire.IMAGE_TOPIC, wire.image_qos())
    records = probe.create_publisher(interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC,
                                     wire.EVENTS_QOS)
    start = 10 ** 9
    stamps = start + period * np.arange(T)
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    with spinning(ros_context, [collector, probe]):
        wait_until(lambda: states.get_subscription_count() and images.get_subscription_count()
                   and records.get_subscription_count(), what="discovery")
        for trial_id, skipped in ((1, None), (2, 2)):
            for t, stamp in enumerate(stamps + (trial_id - 1) * T * period):
                states.publish(wire.encode_joint_state(["shoulder", "elbow"], [0.1 * t, 0.2],
                                                       [0.0, 0.0], [0.0, 0.0], int(stamp)))
                # 5 ms late: within the 10 ms tolerance; step `skipped` gets one 20 ms late
                late = 20_000_000 if t == skipped else 5_000_000
                images.publish(wire.encode_image(pixels + t, int(stamp) + late))
            records.publish(wire.encode_trial_record(wire.TrialRecord(
                trial_id=trial_id, condition=0, iteration=1, index=0, controller_version=0,
                purpose="sample", status=wire.TrialStatus.OK, target=np.zeros(3),
                state_stamps=wire.stamps_to_pairs(stamps + (trial_id - 1) * T * period),
                commands=np.zeros((T, 2)))))
            assert rollouts.wait_for(lambda items: len(items) == trial_id, timeout=10)
    good, bad = rollouts.items
    assert good.status == wire.TrialStatus.OK
    np.testing.assert_array_equal(good.images[:, 0, 0, 0], np.arange(T))
    np.testing.assert_array_equal(good.image_stamps_ns, stamps + 5_000_000)
    assert bad.status == wire.TrialStatus.MISSING_IMAGE and bad.images is None
    assert collector.published == {"OK": 1, "MISSING_IMAGE": 1}


# ---------------------------------------------------------------- lqr_controller: an image policy
def export_image_policy(config, path, seed=0):
    """A small untrained image policy for `config` (its camera's size), exported to `path`."""
    from mbpl_ros.core.policy.deploy import export_torchscript
    from mbpl_ros.core.policy.network import ImagePolicy
    from mbpl_ros.core.policy.settings import ImagePolicySettings
    from mbpl_ros.core.rollouts import observation_indices

    layout = config.layout
    policy = ImagePolicy(layout.dX, layout.dU, list(observation_indices(layout)),
                         (config.camera.height, config.camera.width),
                         ImagePolicySettings(conv_channels=(4,), kernel_sizes=(3,), strides=(1,)),
                         (8,), seed=seed)
    rng = np.random.default_rng(seed)
    policy.fit_normalization(rng.normal(size=(20, layout.dX)),
                             rng.integers(0, 256, size=(20, config.camera.height,
                                                        config.camera.width, 3), dtype=np.uint8))
    export_torchscript(policy, path, joint_names=list(config.robot_spec.joint_names),
                       action_covariance=0.01 * np.eye(layout.dU))
    return path


@pytest.mark.timeout(90)
def test_the_controller_runs_an_image_policy_on_each_steps_image(ros_context, tmp_path):
    """An image policy's trial: each command is the policy's on (state, the step's image),
    the image the collector puts into the rollout."""
    pytest.importorskip("torch")
    from mbpl_ros.core.policy.deploy import load_exported_policy

    T = 6
    experiment = camera_experiment(tmp_path / "experiment.yaml", T=T)
    config = load_experiment(experiment)
    policy_path = export_image_policy(config, tmp_path / "policy.pt")
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep"))
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep", reset_mode="sim_service",
        policy_path=str(policy_path)))
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment)))
    probe = create_probe(ros_context)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    requests = TrialGoalSender(probe)
    assert controller._image_sub is not None     # the policy sees images: subscribed
    with spinning(ros_context, [sim, controller, collector, probe]):
        wait_until(lambda: requests.get_subscription_count()
                   and probe.count_publishers(wire.ROLLOUTS_TOPIC)
                   and controller._reset.service_is_ready()
                   and controller._image_sub.get_publisher_count(), what="discovery")
        requests.publish(_trial_goal(config, 3, executor="policy"))
        assert rollouts.wait_for(lambda items: items, timeout=30)
    rollout = rollouts.items[0]
    assert rollout.status == wire.TrialStatus.OK and rollout.images.shape == (T, 16, 16, 3)
    policy = load_exported_policy(policy_path)
    expected = np.clip(policy(rollout.X, rollout.images), [-2.0, -1.0], [2.0, 1.0])
    np.testing.assert_allclose(rollout.U, expected, rtol=1e-5, atol=1e-6)
    blind = np.clip(policy(rollout.X, np.zeros_like(rollout.images)), [-2.0, -1.0], [2.0, 1.0])
    assert np.abs(blind - expected).max() > 1e-6     # the images did matter
    assert controller.faults["missing_image"] == 0


@pytest.mark.timeout(60)
def test_a_policy_that_sees_images_is_refused_without_a_camera_of_its_size(ros_context,
                                                                           tmp_path):
    pytest.importorskip("torch")
    from mbpl_ros.nodes.common import NodeParameterError

    experiment = camera_experiment(tmp_path / "experiment.yaml", T=6)
    policy_path = export_image_policy(load_experiment(experiment), tmp_path / "policy.pt")
    blind = small_experiment(tmp_path / "blind.yaml", T=6)
    with pytest.raises(NodeParameterError, match=r"parameter 'policy_path'.*key image is "
                       r"\{'channels': 3, 'height': 16, 'width': 16\}; allowed: the experiment's "
                       r"camera \(it has none"):
        LqrControllerNode(context=ros_context, parameter_overrides=parameters(
            experiment_config=str(blind), mode="lockstep", policy_path=str(policy_path)))


@pytest.mark.timeout(90)
def test_when_the_camera_stops_the_image_policy_trial_ends_with_the_fallback(ros_context,
                                                                            tmp_path):
    """The camera (a relay of sim_robot's images) stops after 3 images: step 3 waits for its
    image, image_timeout_s later the fallback (zero effort) is sent and the trial aborted
    (MISSING_IMAGE); the commands before are the policy's, within the limits, and none
    follows the fallback."""
    pytest.importorskip("torch")
    T, relayed = 10, 3
    experiment = camera_experiment(tmp_path / "experiment.yaml", T=T)
    config = load_experiment(experiment)
    policy_path = export_image_policy(config, tmp_path / "policy.pt")
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep", image_topic="/camera/sim_raw"))
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep", reset_mode="sim_service",
        policy_path=str(policy_path), image_timeout_s=0.3, watchdog_periods=40))
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment)))
    probe = create_probe(ros_context)
    camera = probe.create_publisher(Image, wire.IMAGE_TOPIC, wire.image_qos())
    budget = {"left": 0}

    def relay(msg):   # the camera: forwards sim_robot's images while it has budget
        if budget["left"] > 0:
            budget["left"] -= 1
            camera.publish(msg)
    probe.create_subscription(Image, "/camera/sim_raw", relay, wire.image_qos())
    commands = Recorder(lambda msg: (time.monotonic(), np.array(msg.data)))
    probe.create_subscription(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, commands, 100)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    requests = TrialGoalSender(probe)
    with spinning(ros_context, [sim, controller, collector, probe]):
        wait_until(lambda: requests.get_subscription_count()
                   and probe.count_publishers(wire.ROLLOUTS_TOPIC)
                   and controller._reset.service_is_ready()
                   and camera.get_subscription_count() and probe.count_publishers("/camera/sim_raw")
                   and commands_subscribed(probe), what="discovery")
        budget["left"] = relayed
        requests.publish(_trial_goal(config, 11, executor="policy"))
        assert requests.wait_for(lambda: 11 in requests.results, timeout=30)
        ended = time.monotonic()
        assert rollouts.wait_for(lambda items: items, timeout=10)
        time.sleep(0.5)     # no command may follow the fallback
    result = requests.results[11]
    assert result.status.value == wire.TrialStatus.MISSING_IMAGE
    assert "waited" in result.reason and "image_timeout_s = 0.3 s" in result.reason
    assert rollouts.items[0].status == wire.TrialStatus.MISSING_IMAGE
    sent = [effort for _, effort in commands.items]
    assert len(sent) == relayed + 1, sent            # the 3 policy steps, then the fallback
    np.testing.assert_array_equal(sent[-1], [0.0, 0.0])
    assert all(np.all(np.isfinite(e)) and np.all(np.abs(e) <= [2.0, 1.0]) for e in sent)
    assert commands.items[-1][0] <= ended + 0.1
    gap = commands.items[-1][0] - commands.items[-2][0]
    assert 0.3 <= gap < 1.0, gap                      # image_timeout_s after the last step
    assert controller.faults["missing_image"] == 1 and controller.faults["watchdog"] == 0


def commands_subscribed(probe):
    return probe.count_publishers(wire.EFFORT_COMMANDS_TOPIC) > 0


# ---------------------------------------------------------------- training through the graph
def tiny_vision_experiment(path, sample_on_policy=True):
    """The vision reacher cut down for CI: 16x16 frames, 2 conditions, T=10, 2 rollouts each,
    a network of one 4-channel convolution and 8 hidden units, 30 Adam steps per S-step."""
    import yaml

    from loop_helpers import REPO

    base = yaml.safe_load((REPO / "config" / "reacher_2link_vision.yaml").read_text())
    camera = dict(base["camera"], width=16, height=16, target_radius=0.05)
    policy = dict(base["policy"], hidden_sizes=[8], iterations=30, batch_size=16,
                  sample_on_policy=sample_on_policy,
                  image={"conv_channels": [4], "kernel_sizes": [3], "strides": [1]})
    config = dict(base, T=10, rollouts_per_condition=2, camera=camera, policy=policy,
                  conditions=[base["conditions"][0], base["conditions"][8]])   # two corners
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(300)
def test_a_tiny_image_policy_trained_through_the_graph_is_the_one_mbpl_train_trains(tmp_path):
    """Camera topic -> sample_collector -> gps_trainer (S-step on the rollouts' images) ->
    lqr_controller running the image policy (iteration 2's samples and every policy
    evaluation): two lockstep iterations give mbpl train's metrics, recording and policy."""
    pytest.importorskip("torch")
    from test_learning_loop import assert_same_metrics, graph_run, offline_run

    from mbpl_ros.core.policy.deploy import load_exported_policy
    from mbpl_ros.recording import read_recording

    experiment = tiny_vision_experiment(tmp_path / "experiment.yaml")
    reference = offline_run(experiment, tmp_path / "offline", iterations=2)
    rows = graph_run(experiment, tmp_path / "graph", iterations=2)
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    assert rows[2]["policy_final_distance_m"] is not None
    assert_same_metrics(rows, reference)
    graph = read_recording(tmp_path / "graph" / "rollouts.mcap")
    offline = read_recording(tmp_path / "offline" / "rollouts.mcap")
    assert len(graph.rollouts) == len(offline.rollouts) == 2 * 2 * 2
    for recorded, expected in zip(graph.rollouts, offline.rollouts):
        assert recorded.images.shape == (10, 16, 16, 3)
        np.testing.assert_array_equal(recorded.images, expected.images)
        np.testing.assert_allclose(recorded.positions, expected.positions, rtol=1e-9, atol=1e-12)
    graph_policy = load_exported_policy(tmp_path / "graph" / "policy.pt")
    offline_policy = load_exported_policy(tmp_path / "offline" / "policy.pt")
    assert graph_policy.needs_image and graph_policy.image_shape == (16, 16)
    X = np.zeros((10, graph_policy.dX))
    X[:, :2] = graph.rollouts[0].positions
    np.testing.assert_allclose(graph_policy(X, graph.rollouts[0].images),
                               offline_policy(X, offline.rollouts[0].images),
                               rtol=1e-6, atol=1e-9)
