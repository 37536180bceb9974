"""Offline tools for emolive's training data and checks: TTS with phone timings, visemes, a face tracker."""
