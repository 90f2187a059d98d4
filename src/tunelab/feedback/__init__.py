"""Human feedback: sample answers from runs, have people rate them blind in pairs, export the ratings
as preference data (TRL, OpenAI, KTO) and turn ratings (or a reward model) into win-rates.

store.py holds the records (tables in the run registry's SQLite file, so the dashboard of
`tunelab serve` sees them); sample.py, export.py and winrate.py are the steps around it.
"""
