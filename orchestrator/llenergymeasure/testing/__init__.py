"""Test doubles shipped with the package (fake Docker client, fake results)."""
