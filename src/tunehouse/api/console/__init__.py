"""The web console: server-rendered pages, their forms and static assets, cookie sessions."""
