"""Relax graph rewrites: BatchNorm folding, quantization to qnn-level ops, legalization to integer Relax/TIR."""
