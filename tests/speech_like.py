"""A synthetic speech-like signal for the format and loudness tests.

No real recording ships with the installed packages (and real Bark audio needs
the real model, not available offline; the tiny test model makes noise). So
this builds what matters to a codec and a loudness meter: a glottal pulse train
(120 Hz, gliding like intonation) through three vowel formants, cut into
250 ms syllables of varied stress with a pause every fifth, plus short
low-passed noise bursts like plosives, and a faint noise floor. Its
peak-to-loudness ratio is about 20 dB, the upper range of real speech: well
over the 15 dB an audiobook target (-18 LUFS, -3 dBTP) allows, so the
true-peak ceiling bites and the limiter has real work to do.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, lfilter

RATE = 24_000  # Bark's rate
PITCH_HZ = 120.0
FORMANTS_HZ = ((700, 90), (1200, 110), (2600, 160))  # centre, bandwidth: an open vowel
SYLLABLE_S = 0.25
STRESS_LEVELS = (0.3, 0.55, 1.0)
STRESS_ODDS = (0.4, 0.4, 0.2)
PAUSE_EVERY = 5  # syllables
PLOSIVE_ODDS = 0.3
PLOSIVE_S = 0.01
PLOSIVE_CUTOFF_HZ = 5000
PEAK = 0.5  # sample peak of the result: -6 dBFS


def speech_like(seconds: float = 6.0, rate: int = RATE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    pitch = PITCH_HZ * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t) + 0.05 * np.sin(2 * np.pi * 3.1 * t))
    voiced = np.diff(np.floor(np.cumsum(pitch / rate)), prepend=0.0)  # one impulse per glottal period
    for centre, bandwidth in FORMANTS_HZ:
        radius, angle = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * centre / rate
        voiced = lfilter([1 - radius], [1, -2 * radius * np.cos(angle), radius**2], voiced)
    voiced /= np.max(np.abs(voiced))

    syllable = np.floor(t / SYLLABLE_S).astype(int)
    stress = rng.choice(STRESS_LEVELS, size=syllable.max() + 1, p=STRESS_ODDS)
    spoken = syllable % PAUSE_EVERY != PAUSE_EVERY - 1
    audio = voiced * np.sin(np.pi * ((t / SYLLABLE_S) % 1)) ** 2 * stress[syllable] * spoken

    b, a = butter(2, PLOSIVE_CUTOFF_HZ / (rate / 2))
    burst = int(PLOSIVE_S * rate)
    for index in np.flatnonzero(rng.random(syllable.max() + 1) < PLOSIVE_ODDS):
        start = int((index * SYLLABLE_S + 0.02) * rate)
        if start + burst < n and spoken[start]:
            noise = rng.uniform(0.2, 0.45) * rng.standard_normal(burst)
            audio[start : start + burst] += lfilter(b, a, noise) * np.hanning(burst)
    audio += 1e-3 * rng.standard_normal(n)
    return (PEAK * audio / np.max(np.abs(audio))).astype(np.float32)
