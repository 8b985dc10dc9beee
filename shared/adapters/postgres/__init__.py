"""PostgreSQL adapters: versioned migrations, the enrichment sink and the reference repository (psycopg 3)."""
