"""The throwaway world that `chatbot demo` and the tests run the bot in, not the bot itself.

- `homeserver`: a private Synapse on 127.0.0.1, with shared-secret registration;
- `person`: a person on a real Matrix client, who says things and waits for answers;
- `script`: the scripted demo meeting that `chatbot demo` plays.
"""
