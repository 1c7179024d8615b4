"""Result files (schema) and their HTML rendering."""
