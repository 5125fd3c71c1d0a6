"""`python -m mergekit_swarm ...` is `mergekit-swarm ...`."""

from mergekit_swarm.cli import main

if __name__ == "__main__":
    main()
