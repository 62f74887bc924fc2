"""A minimal Django project whose views enqueue unbroken jobs (README, "Django")."""
