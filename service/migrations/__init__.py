"""ClickHouse migrations, applied in order, each once (``schema_migrations`` records them):
``NNN_name.sql`` (statements; ``{db}`` is the database) or ``NNN_name.py`` (a module with
``apply(client, database)``, for a step that must look at the database before it acts).
Once shipped, a migration never changes; service/schema.sql is where they lead."""
