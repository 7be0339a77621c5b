"""`qana report` and what it renders: model folders, cached evaluations, ablation tables, side studies, Markdown."""
