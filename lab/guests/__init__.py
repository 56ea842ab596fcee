"""Guests for the lab: tiny kernels that QEMU boots directly, built by Python at run time."""
