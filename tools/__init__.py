"""The lab beside the lesson: benchmarks and the GPU suite, memory, the real shapes, plots, the
paper's experiment, and the method as a TRL trainer. Run from the repository's root, e.g.
`python -m tools.bench logprobs`; each tool imports the method's files from the root."""
