"""Foundations every layer uses: errors, shared names, recipe-section schema, safe file reading and
writing, console output, optional extras, content fingerprints, run options, tensor packing.

The first layer: it imports nothing else of the package.
"""
