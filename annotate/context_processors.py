from annotate.roles import is_researcher


def roles(request):
    return {"is_researcher": is_researcher(request.user)}
