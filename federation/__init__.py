"""Collaborative training across sites on Flower: each site fine-tunes on data that never
leaves it, the cloud aggregates the weights, and the aggregate ships like any retrained model."""
