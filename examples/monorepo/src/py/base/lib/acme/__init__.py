"""acme: the shared library every service builds on."""

VERSION = "1.0"
