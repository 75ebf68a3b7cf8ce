"""Exponential-moving-average teachers: frozen copies of student layers.

The teacher is never trained by gradients; after each optimizer step it
moves towards the student, `teacher = m * teacher + (1 - m) * student`.
Updates come in two forms with the same math: on variables (TensorFlow
and PyTorch train steps, which mutate state) and on the value lists of a
stateless JAX train step.
"""

import keras
from keras import ops


def ema(teacher, student, momentum):
    """`momentum * teacher + (1 - momentum) * student`, without gradient.

    Args:
        teacher: float tensor.
        student: float tensor of the same shape.
        momentum: float or float scalar tensor in [0, 1] (e.g. from
            `stage_b.ema_momentum_at`).

    Returns:
        The updated teacher value, computed in float32 and cast to the
        teacher's dtype.
    """
    student = ops.cast(ops.stop_gradient(student), "float32")
    momentum = ops.cast(momentum, "float32")
    updated = momentum * ops.cast(teacher, "float32") + (1.0 - momentum) * (
        student
    )
    return ops.cast(updated, teacher.dtype)


def frozen_copy(layer: keras.layers.Layer, name: str, input_shape):
    """A non-trainable layer with `layer`'s config and current weights.

    Args:
        layer: a built layer with `get_config`.
        name: name of the copy.
        input_shape: shape to build the copy with.

    Returns:
        The copy, built, with `trainable=False`.
    """
    copy = layer.__class__.from_config({**layer.get_config(), "name": name})
    copy.build(input_shape)
    copy.trainable = False
    for target, source in _pairs(layer.weights, copy.weights, layer.name):
        # A new buffer: JAX may not donate one array twice to a step.
        target.assign(ops.copy(source.value))
    return copy


def _pairs(sources, targets, what):
    # Returns (target, source) pairs of two same-architecture weight lists.
    if len(sources) != len(targets):
        raise ValueError(
            f"Teacher and student of {what!r} differ: {len(targets)} vs "
            f"{len(sources)} weights."
        )
    pairs = []
    for source, target in zip(sources, targets):
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(
                f"Teacher weight {target.path} has shape "
                f"{tuple(target.shape)}; student weight {source.path} has "
                f"{tuple(source.shape)}."
            )
        pairs.append((target, source))
    return pairs


class EMATeacher:
    """Pairs teacher variables with student variables and updates them.

    Args:
        students: student layers.
        teachers: teacher layers of the same architectures, in the same
            order (e.g. from `frozen_copy`).
    """

    def __init__(self, students, teachers):
        self.pairs = []
        for student, teacher in zip(students, teachers, strict=True):
            self.pairs += _pairs(student.weights, teacher.weights, student.name)

    # Stateful form (TensorFlow, PyTorch, eager code).

    def copy_where(self, condition):
        """Sets `teacher = student` where `condition` (scalar bool)."""
        for teacher, student in self.pairs:
            teacher.assign(
                ops.where(
                    condition,
                    ops.cast(student.value, teacher.dtype),
                    teacher.value,
                )
            )

    def update_where(self, condition, momentum):
        """Sets `teacher = ema(teacher, student, momentum)` if `condition`."""
        for teacher, student in self.pairs:
            teacher.assign(
                ops.where(
                    condition,
                    ema(teacher.value, student.value, momentum),
                    teacher.value,
                )
            )

    # Stateless form (JAX): values are lists ordered as the model's
    # `trainable_variables` / `non_trainable_variables`.

    def stateless_copy_where(
        self, model, trainable_values, non_trainable_values, condition
    ):
        """Returns `non_trainable_values` with teachers set to students
        where `condition`."""
        return self._stateless(
            model,
            trainable_values,
            non_trainable_values,
            lambda teacher, student: ops.where(
                condition, ops.cast(student, teacher.dtype), teacher
            ),
        )

    def stateless_update_where(
        self, model, trainable_values, non_trainable_values, condition, momentum
    ):
        """Returns `non_trainable_values` with teachers EMA-updated towards
        the students where `condition`."""
        return self._stateless(
            model,
            trainable_values,
            non_trainable_values,
            lambda teacher, student: ops.where(
                condition, ema(teacher, student, momentum), teacher
            ),
        )

    def _stateless(self, model, trainable_values, non_trainable_values, fn):
        trainable_index = _index(model.trainable_variables)
        non_trainable_index = _index(model.non_trainable_variables)
        new_values = list(non_trainable_values)
        for teacher, student in self.pairs:
            if id(teacher) not in non_trainable_index:
                raise ValueError(
                    f"Teacher weight {teacher.path} must be non-trainable."
                )
            if id(student) in trainable_index:
                student_value = trainable_values[trainable_index[id(student)]]
            else:
                student_value = non_trainable_values[
                    non_trainable_index[id(student)]
                ]
            position = non_trainable_index[id(teacher)]
            new_values[position] = fn(new_values[position], student_value)
        return new_values


def _index(variables):
    return {id(variable): i for i, variable in enumerate(variables)}
