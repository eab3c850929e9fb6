"""bench/profile_step.py's reading of a TensorFlow profile: self times of nested events, an op's type and phase
from its event name, the categories both sides are grouped into. A hand-made XSpace, checked against sums written
out here."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import profile_step  # noqa: E402


def xspace(lines, plane_name="/host:CPU"):
    """An XSpace of one plane: `lines` is a list of threads, each a list of (name, start us, duration us)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name=plane_name)
    ids = {}
    for thread in lines:
        line = plane.lines.add()
        for name, start, duration in thread:
            if name not in ids:
                ids[name] = len(ids) + 1
                plane.event_metadata[ids[name]].name = name
            line.events.add(metadata_id=ids[name], offset_ps=int(start * 1e6), duration_ps=int(duration * 1e6))
    return space


def test_self_time_is_the_duration_less_the_nested_events():
    space = xspace([
        # a function call holding two ops, the second holding a kernel; then an op on its own
        [("__inference_step_1", 0, 100), ("model/conv/Conv2D:Conv2D", 10, 30), ("gradient_tape/x:ReluGrad", 50, 40),
         ("kernel", 60, 15), ("adam/Mul:Mul", 120, 5)],
        [("model/bn:FusedBatchNormV3", 0, 70)],  # another thread: not nested in the first one's events
    ])
    found = {name: us for name, us in profile_step.self_times(space)}
    assert found == {"__inference_step_1": pytest.approx(100 - 30 - 40), "model/conv/Conv2D:Conv2D": 30,
                     "gradient_tape/x:ReluGrad": pytest.approx(40 - 15), "kernel": 15, "adam/Mul:Mul": 5,
                     "model/bn:FusedBatchNormV3": 70}


def test_only_host_planes_are_read():
    assert profile_step.self_times(xspace([[("a:Conv2D", 0, 5)]], plane_name="/device:GPU:0")) == []


def test_an_ops_type_and_phase_come_from_its_name():
    assert profile_step.op_and_phase("functional/conv1/convolution:Conv2D") == ("Conv2D", "forward and loss")
    assert profile_step.op_and_phase("gradient_tape/functional/conv1/Conv2DBackpropInput:Conv2DBackpropInput") == (
        "Conv2DBackpropInput", "backward")
    assert profile_step.op_and_phase("adam/AssignSubVariableOp_3:AssignSubVariableOp") == (
        "AssignSubVariableOp", "optimizer")
    assert profile_step.op_and_phase("trainer/adam_1/Sqrt:Sqrt") == ("Sqrt", "optimizer")
    assert profile_step.op_and_phase("functional/adamant/Add:AddV2") == ("AddV2", "forward and loss")
    for not_an_op in ("__inference_one_step_on_data_123", "ExecutorState::Process", "kernel"):
        assert profile_step.op_and_phase(not_an_op) is None


@pytest.mark.parametrize("op, expected", [
    ("Conv2D", "convolution forward"), ("_FusedConv2D", "convolution forward"),
    ("aten::mkldnn_convolution", "convolution forward"),
    ("Conv2DBackpropFilter", "convolution backward"), ("aten::convolution_backward", "convolution backward"),
    ("FusedBatchNormV3", "BatchNorm forward"), ("aten::native_batch_norm", "BatchNorm forward"),
    ("FusedBatchNormGradV3", "BatchNorm backward"), ("aten::native_batch_norm_backward", "BatchNorm backward"),
    ("ReluGrad", "ReLU forward and backward"), ("aten::threshold_backward", "ReLU forward and backward"),
    ("MaxPoolGrad", "pooling forward and backward"), ("aten::max_pool2d_with_indices", "pooling forward and backward"),
    ("MatMul", "classifier matmul"), ("aten::addmm", "classifier matmul"),
    ("AddV2", profile_step.OTHER), ("aten::add_", profile_step.OTHER),
])
def test_both_sides_ops_fall_in_the_same_categories(op, expected):
    assert profile_step.category(op) == expected


def test_per_step_and_categories_sum_what_they_group():
    ops = profile_step.per_step({"Conv2D": 3000.0, "Conv2DBackpropInput": 9000.0, "AddV2": 600.0}, steps=3)
    assert list(ops) == ["Conv2DBackpropInput", "Conv2D", "AddV2"] and ops["Conv2D"] == pytest.approx(1.0)
    assert profile_step.by_category(ops) == {"convolution backward": pytest.approx(3.0),
                                             "convolution forward": pytest.approx(1.0),
                                             profile_step.OTHER: pytest.approx(0.2)}


def test_ops_of_two_threads_at_once_count_once_in_the_wall_time_they_ran():
    space = xspace([
        [("__inference_step_1", 0, 100), ("a/Conv2D:Conv2D", 10, 30), ("gradient_tape/b:ReluGrad", 60, 20)],
        [("c:Conv2DBackpropFilter", 25, 30), ("d:AddV2", 90, 5)],  # 25-55 overlaps 10-40; 90-95 stands alone
    ])
    intervals = profile_step.op_intervals(space)  # the function call is not an op
    assert sorted(intervals) == [(10, 40), (25, 55), (60, 80), (90, 95)]
    assert profile_step.union_length(intervals) == pytest.approx((55 - 10) + (80 - 60) + (95 - 90))
    assert profile_step.union_length([(0, 10), (2, 3), (5, 12), (20, 21)]) == pytest.approx(13)  # nested, chained
    assert profile_step.union_length([]) == 0
