"""Run a weightgeo command on CIFAR-shaped fake data written by weightgeo.data.testing.

torchvision checks the MD5 sums of the real CIFAR files; the fake ones (real format, random
learnable images) load only with that check off. Usage, as `weightgeo` itself:

    python benchmarks/fake_cifar_cli.py write --root data-fake --dataset cifar10 --train 50000 --test 10000
    python benchmarks/fake_cifar_cli.py train --model vgg16 --dataset cifar10 --data-root data-fake --out runs/x
"""

from __future__ import annotations

import sys

from weightgeo.cli import main
from weightgeo.data.testing import fake_cifar_checksums, write_fake_cifar


def write(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="write fake CIFAR files in torchvision's format")
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    args = parser.parse_args(argv)
    write_fake_cifar(args.root, args.dataset, n_train=args.train, n_test=args.test)
    print(f"wrote fake {args.dataset} ({args.train} train, {args.test} test) under {args.root}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"]:
        write(sys.argv[2:])
    else:
        with fake_cifar_checksums():
            main(sys.argv[1:])
