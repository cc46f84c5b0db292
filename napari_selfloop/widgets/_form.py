"""A panel's settings declared in one mapping and built from it, with the config's defaults.

Each entry names a field of a config dataclass (``TrainConfig``, ``PretrainConfig``): the
kind of Qt control, its label, range, step and tooltip. :func:`build_controls` makes the
controls with the config's values, :func:`add_rows` puts them in a form and
:func:`read_values` gives the values back by field name, ready for the config again. Plain
Qt rather than magicgui: see "Panels: plain Qt and magicgui" in docs/development.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox, QWidget


@dataclass(frozen=True)
class Field:
    """One control: ``kind`` is QSpinBox, QDoubleSpinBox, QComboBox (``choices``) or
    QCheckBox (``label`` is its text). A spin box with ``none_text`` shows that text at its
    minimum, which stands for None (a config's ``auto``)."""

    kind: type[QWidget]
    label: str
    range: tuple[float, float] = (0, 0)
    step: float | None = None
    decimals: int | None = None
    choices: tuple[Any, ...] = ()
    tooltip: str = ""
    none_text: str = ""


def make_control(field: Field, value: Any) -> QWidget:
    """The control of ``field``, showing ``value``."""
    widget = field.kind()
    if isinstance(widget, QComboBox):
        widget.addItems([str(c) for c in field.choices])
        widget.setCurrentText(str(value))
    elif isinstance(widget, QCheckBox):
        widget.setText(field.label)
        widget.setChecked(bool(value))
    elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        if field.decimals is not None:
            widget.setDecimals(field.decimals)  # before the range, which it rounds
        widget.setRange(*field.range)
        if field.step is not None:
            widget.setSingleStep(field.step)
        if field.none_text:
            widget.setSpecialValueText(field.none_text)
        widget.setValue(field.range[0] if value is None and field.none_text else value)
    else:
        raise TypeError(f"no form control of kind {field.kind.__name__}")
    if field.tooltip:
        widget.setToolTip(field.tooltip)
    return widget


def build_controls(fields: Mapping[str, Field], defaults: object) -> dict[str, Any]:
    """One control per field, showing that field's value in ``defaults`` (a config)."""
    return {name: make_control(field, getattr(defaults, name)) for name, field in fields.items()}


def add_rows(form: QFormLayout, fields: Mapping[str, Field], controls: Mapping[str, Any]) -> None:
    """A labelled row of ``form`` per field, in the mapping's order."""
    for name, field in fields.items():
        form.addRow(field.label, controls[name])


def read_values(fields: Mapping[str, Field], controls: Mapping[str, Any]) -> dict[str, Any]:
    """The controls' values by field name (a choice as given in ``choices``)."""
    values: dict[str, Any] = {}
    for name, field in fields.items():
        widget = controls[name]
        if isinstance(widget, QComboBox):
            values[name] = field.choices[widget.currentIndex()]
        elif isinstance(widget, QCheckBox):
            values[name] = widget.isChecked()
        elif field.none_text and widget.value() == widget.minimum():
            values[name] = None
        else:
            values[name] = widget.value()
    return values
