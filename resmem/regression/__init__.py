"""The paper's stylized regression study (`regression` in the config): the study, its stages and report."""
