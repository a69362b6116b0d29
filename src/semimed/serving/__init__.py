"""A trained model handed to a user: the self-describing model folder (`model_folder`),
`semimed predict` (`predict`, `predict_io`), `semimed export` (`export`) and the console
script (`console`)."""
