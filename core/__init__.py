"""What every app may use: plain helpers below the apps, importing none of them.

rows: prepared statements and model instances from raw rows (the hot paths)
text: what PostgreSQL can store
messages: a ValidationError as one line a user reads
"""
