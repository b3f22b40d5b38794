"""The reproduction of Zhang et al. (ACL 2023) as one command, `tiekd experiment`, kept apart from the
distillation library it drives. `pipeline` runs the experiment (`Pipeline`, stage by stage) from a preset in tiekd/presets/ (data,
teacher, students, tables, plots) and `checks` checks every run's settings before any stage
starts; `report` writes the results (tables, significance tests and plots), with the paper's claims
checked against the rows (`findings`), validation BLEU against core-hours (`compute_view`) and the
rows by student size (`size_view`)."""
