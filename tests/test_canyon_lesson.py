"""The canyon's hand-computed steps (the lesson on the canyon and smart nudging), L = 100x² + y² from (1, 1),
to the digits printed there. The computation lives in the examples' section of the claims report
(`optimlab claims --examples canyon-steps`); these tests pin each printed number to it.

Four of the lesson's numbers come from carrying its own rounded numbers into the next line: momentum's
g_y = 1.884 is 2 × the printed y = 0.942 (exactly 2 × 0.9424 = 1.8848); Adam's second update −0.413
is 0.1 × 31.68/√58.7 from the printed moments (exactly −0.41357), so its position 0.271 = 0.684 − 0.413
is exactly 0.27021 and the next gradient 54.2 is exactly 54.04. The tests check the exact values at the
printed precision, and show how the lesson arrived at its figures.
"""

from __future__ import annotations

import torch

import optimlab
from optimlab.lab.examples.canyon_steps import canyon_steps, printed


def check(pairs):
    for value, text in pairs:
        assert printed(value, text), f"{value} does not print as {text}"


def test_vanilla_sgd_bounces_wall_to_wall():
    for make in (lambda ps: optimlab.SGD(ps, lr=0.01), lambda ps: torch.optim.SGD(ps, lr=0.01)):
        pos, grads, _ = canyon_steps(make)
        # step 0: (1.000, 1.000) grad = (200, 2)  update = (-2.00, -0.02) ... step 3: (-1.000, 0.941)
        check(zip(pos[1], ["-1.000", "0.980"]))
        check(zip(pos[2], ["1.000", "0.960"]))
        check(zip(pos[3], ["-1.000", "0.941"]))
        check(zip(grads[0] + grads[1] + grads[2], ["200", "2", "-200", "1.96", "200", "1.92"]))
        check(zip([pos[1][0] - pos[0][0], pos[1][1] - pos[0][1]], ["-2.00", "-0.02"]))


def test_momentum_cancels_the_bounce_to_a_tenth():
    pos, grads, states = canyon_steps(lambda ps: optimlab.SGD(ps, lr=0.01, momentum=0.9))
    velocity = [s["momentum_buffer"] for s in states]
    check(zip(velocity[0] + velocity[1] + velocity[2], ["200", "2", "-20", "3.76", "-178", "5.27"]))
    check(zip(pos[1] + pos[2] + pos[3], ["-1.000", "0.980", "-0.800", "0.942", "0.980", "0.890"]))
    check(zip(grads[2], ["-160", "1.885"]))  # the lesson prints 1.884: 2 × its rounded y = 0.942
    assert printed(2 * float("0.942"), "1.884") and not printed(grads[2][1], "1.884")
    assert abs(velocity[1][0]) == abs(velocity[0][0]) / 10  # "cancelled itself down to a tenth"


def test_adam_without_bias_correction_moves_x_and_y_alike():
    pos, grads, states = canyon_steps(lambda ps: optimlab.Adam(ps, lr=0.1, bias_correction=False))
    m = [s["exp_avg"] for s in states]
    v = [s["exp_avg_sq"] for s in states]
    check(zip(m[0] + v[0], ["20", "0.2", "40", "0.004"]))
    check(zip(m[1] + v[1], ["31.68", "0.317", "58.7", "0.00587"]))
    check(zip(pos[1] + pos[2], ["0.684", "0.684", "0.270", "0.270"]))  # the lesson prints 0.271 (see above)
    check(zip([pos[1][0] - pos[0][0], pos[2][0] - pos[1][0]], ["-0.316", "-0.414"]))  # the lesson: -0.413
    assert printed(-0.1 * float("31.68") / float("58.7") ** 0.5, "-0.413")
    check(zip(grads[1] + grads[2], ["136.8", "1.368", "54.0", "0.540"]))  # the lesson: 54.2 = 200 × 0.271
    assert printed(float("0.684") - float("0.413"), "0.271") and not printed(pos[2][0], "0.271")
    assert abs(pos[3][0] - pos[3][1]) < 1e-6  # x and y still move at the same speed
