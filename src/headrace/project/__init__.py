"""Loading a project: pipeline modules, SQL models and the table DAG."""
