from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

# annotate.urls first: its annotator endpoints take nearly every request (annotate/urls.py).
urlpatterns = [
    path("", include("annotate.urls")),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]

# A database error raised outside a view (in a middleware such as sessions') answers 503 too.
handler500 = "webapp.middleware.server_error"

# No URL serves MEDIA_ROOT, DEBUG included: images go out only through the views that check
# membership and leases (annotate_image, researcher_image), reports through their download view.
