"""Side-by-side performance benchmark of chatbot against a minimal matrix-nio bot."""
