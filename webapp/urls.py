from django.conf import settings
from django.conf.urls.static import static
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

if settings.DEBUG and settings.MEDIA_STORAGE == "local":
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
